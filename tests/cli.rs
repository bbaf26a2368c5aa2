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

const MINIMAL: &str = "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n";

#[test]
fn a_secret_of_one_repeated_byte_is_refused_from_a_file_and_the_environment() {
    let secret = temp_config("zero.secret", "");
    std::fs::write(&secret, [0u8; 32]).unwrap();
    let path = temp_config(
        "zero-secret.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth:\n  jwt: {{ hs256SecretFile: {} }}\n{MINIMAL}",
            secret.display()
        ),
    );
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 4, column 10: auth.jwt.hs256SecretFile") && stderr.contains("repeated"), "{stderr}");

    let path = temp_config(
        "x-secret.yaml",
        &format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth:\n  jwt: {{ hs256SecretEnv: FUSEBOX_TEST_WEAK_SECRET }}\n{MINIMAL}"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["check", "-c"])
        .arg(&path)
        .env("FUSEBOX_TEST_WEAK_SECRET", "x".repeat(48))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 4, column 10: auth.jwt.hs256SecretEnv") && stderr.contains("repeated"), "{stderr}");
}

#[test]
fn check_refuses_the_tls_and_store_files_run_refuses() {
    let dir = std::env::temp_dir().join(format!("fusebox-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n").unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, "not a key\n").unwrap();
    let tls = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\ntls: {{ certFile: {}, keyFile: {} }}\n{MINIMAL}",
        cert.display(),
        key.display()
    );
    let path = dir.join("tls.yaml");
    std::fs::write(&path, &tls).unwrap();
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "check: {stderr}");
    assert!(stderr.contains("tls.keyFile") && stderr.contains(&*key.display().to_string()), "{stderr}");
    let run = Command::new(env!("CARGO_BIN_EXE_fusebox")).args(["run", "-c"]).arg(&path).output().unwrap();
    let run_err = text(&run.stderr);
    assert!(!run.status.success(), "run refuses it too: {run_err}");
    assert!(run_err.contains(&*key.display().to_string()), "the same file: {run_err}");
    // --skip-file-checks leaves the files out.
    let out = Command::new(env!("CARGO_BIN_EXE_fusebox")).args(["check", "--skip-file-checks", "-c"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A store in a directory that does not exist; then one that does.
    let missing = dir.join("no-such-dir/fusebox.db");
    let store = |p: &Path| {
        format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nstore: {{ path: {} }}\n{MINIMAL}", p.display())
    };
    std::fs::write(&path, store(&missing)).unwrap();
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 4, column 10: store.path") && stderr.contains("no-such-dir"), "{stderr}");
    let not_sqlite = dir.join("not.db");
    std::fs::write(&not_sqlite, "plain text, not a database at all").unwrap();
    std::fs::write(&path, store(&not_sqlite)).unwrap();
    let stderr = text(&check(&path).stderr);
    assert!(stderr.contains("not an SQLite database"), "{stderr}");
    std::fs::write(&path, store(&dir.join("fusebox.db"))).unwrap();
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.join("fusebox.db").exists(), "check creates no store");
    let _ = std::fs::remove_dir_all(&dir);
}
