//! `fusebox check`: the shipped example passes; a typo'd key and semantic
//! errors fail with exit code 2 and every error, with line and column.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["check", "-c"])
        .arg(config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("fusebox runs")
}

/// Writes `text` to a file of its own in the temp dir.
fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fusebox-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn example_config_checks_ok() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fusebox.yaml");
    let out = check(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok (2 upstreams, 3 routes)"), "{stdout}");
}

#[test]
fn typo_key_exits_2_with_position_and_suggestion() {
    let path = temp_config(
        "typo.yaml",
        "listen: 127.0.0.1:8080
upstreams:
  api:
    endpoints: [http://127.0.0.1:7001]
    breaker:
      failureTreshold: 3
routes:
  - { match: { pathPrefix: / }, upstream: api }
",
    );
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 6, column 7"), "{stderr}");
    assert!(stderr.contains("unknown key `failureTreshold`"), "{stderr}");
    assert!(stderr.contains("did you mean `failureThreshold`"), "{stderr}");
    assert!(stderr.contains("upstreams.api.breaker.failureTreshold"), "{stderr}");
}

#[test]
fn semantic_errors_are_all_reported() {
    let path = temp_config(
        "semantic.yaml",
        r#"listen: 127.0.0.1:8080
upstreams:
  api:
    endpoints: [http://127.0.0.1:7001, "not a url"]
    loadBalancing: random
    breaker: { failureThreshold: 0, jitter: 1.5, resetTimeout: soon }
    timeouts: { request: 0s }
routes:
  - { match: { pathPrefix: nope }, upstream: api }
  - { match: { pathPrefix: / }, upstream: apj }
"#,
    );
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("8 error(s)"), "{stderr}");
    let expected = [
        ("line 4, column 40", "upstreams.api.endpoints[1]: `not a url` is not a URL"),
        ("line 5, column 5", "upstreams.api.loadBalancing: `random` is not round-robin or least-request"),
        ("line 6, column 16", "upstreams.api.breaker.failureThreshold: 0 is below the minimum of 1"),
        ("line 6, column 37", "upstreams.api.breaker.jitter: 1.5 is not a fraction in [0, 1)"),
        ("line 6, column 50", "upstreams.api.breaker.resetTimeout: `soon` is not a duration"),
        ("line 7, column 5", "upstreams.api.timeouts: timeouts must be greater than zero"),
        ("line 9, column 16", "routes[0].match.pathPrefix: `nope` must start with `/`"),
        ("line 10, column 33", "routes[1].upstream: no upstream named `apj` (did you mean `api`?)"),
    ];
    for (position, message) in expected {
        let line = stderr.lines().find(|l| l.contains(message)).unwrap_or_else(|| panic!("missing error {message:?} in:\n{stderr}"));
        assert!(line.contains(position), "{message:?} should be at {position}: {line}");
    }
}

#[test]
fn missing_file_exits_non_zero() {
    let out = check(Path::new("/nonexistent/fusebox.yaml"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read file"), "{stderr}");
}

#[test]
fn seed_synonyms_name_the_key_they_mean() {
    for (seed, key) in
        [("recoveryTimeout", "resetTimeout"), ("expectedResponseTime", "slowCallDuration"), ("resetTimeoutMs", "resetTimeout")]
    {
        let path = temp_config(
            &format!("synonym-{seed}"),
            &format!("upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\n    breaker: {{ {seed}: 30s }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: a }}\n"),
        );
        let out = check(&path);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr) + &text(&out.stdout);
        assert!(stderr.contains(&format!("`{key}`")), "{seed} should name {key}: {stderr}");
    }
}

#[test]
fn error_messages_speak_to_operators() {
    let path = temp_config(
        "nits.yaml",
        "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\n    breaker: { failureThreshold: abc }\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n",
    );
    let stderr = text(&check(&path).stderr);
    assert!(stderr.contains("expected a whole number") && !stderr.contains("u32"), "{stderr}");

    let path = temp_config(
        "nits-duration.yaml",
        "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\n    breaker: { resetTimeout: 3x, failureRateThreshold: 150 }\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n",
    );
    let stderr = text(&check(&path).stderr);
    assert!(stderr.contains("`3x` is not a duration") && !stderr.contains(" at 0"), "{stderr}");
    assert!(stderr.contains("150 is not a percentage"), "the bad value is repeated: {stderr}");

    // An unset variable is one error, not also what its hole causes.
    let path = temp_config(
        "nits-env.yaml",
        "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - { match: { pathPrefix: / }, upstream: ${FUSEBOX_TEST_SURELY_UNSET} }\n",
    );
    let stderr = text(&check(&path).stderr);
    assert!(stderr.contains("1 error(s)") && stderr.contains("FUSEBOX_TEST_SURELY_UNSET"), "{stderr}");
}

#[test]
fn check_reads_fusebox_config_like_run() {
    let path = temp_config(
        "env-config.yaml",
        "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fusebox")).arg("check").env("FUSEBOX_CONFIG", &path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("env-config.yaml: ok"), "{}", text(&out.stdout));
}

#[test]
fn a_busy_port_is_one_message_and_a_hint() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let path = temp_config(
        "busy.yaml",
        &format!("listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nupstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: a }}\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fusebox")).args(["run", "-c"]).arg(&path).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("Address already in use").count(), 1, "{stderr}");
    assert!(stderr.contains("hint: another process holds that port"), "{stderr}");
}
