//! The operator's small subcommands, run as the real binary:
//! `fusebox version`, `fusebox healthcheck` against a running fusebox,
//! `fusebox token` whose token a running fusebox accepts for a mutation,
//! `fusebox completions`, `fusebox schema` (and that docs/ holds its
//! current output), and the config papercuts `listen: ":PORT"` and a
//! negative count.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::time::Instant;

use support::process::Process;

fn fusebox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("FUSEBOX_CONFIG")
        .output()
        .expect("fusebox runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A raw HTTP/1.1 request; the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn yaml_with(auth: &str) -> String {
    let port = support::closed_port();
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {auth}\nupstreams:\n  api: {{ endpoints: [\"http://127.0.0.1:{port}\"] }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

#[test]
fn version_names_version_commit_and_target() {
    let out = fusebox(&["version"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with(&format!("fusebox {} (commit ", env!("CARGO_PKG_VERSION"))), "{stdout}");
    // The test binary and fusebox are built for the same target.
    let arch = std::env::consts::ARCH;
    assert!(stdout.contains(arch) && stdout.contains(std::env::consts::OS), "{stdout}");
    // In a git checkout the commit is known: hex, not "unknown".
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() && Command::new("git").arg("--version").output().is_ok() {
        let commit = stdout.split("commit ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default();
        assert!(commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{stdout}");
    }
}

#[test]
fn healthcheck_is_0_for_a_live_fusebox_and_1_otherwise() {
    let fb = Process::start("healthcheck", &yaml_with("none"), &[]);
    let live = format!("http://{}/livez", fb.admin);
    let out = fusebox(&["healthcheck", &live]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A non-2xx answer: fusebox's admin 404.
    let out = fusebox(&["healthcheck", &format!("http://{}/no-such-page", fb.admin)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("status 404"), "{}", text(&out.stderr));

    // Nothing listening.
    let out = fusebox(&["healthcheck", &format!("http://127.0.0.1:{}/livez", support::closed_port())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out.stderr).is_empty());

    // A listener that accepts and never answers: the timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let started = Instant::now();
    let out = fusebox(&["healthcheck", "--timeout", "300ms", &format!("http://{}/livez", silent.local_addr().expect("addr"))]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no answer within"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    let out = fusebox(&["healthcheck", "https://127.0.0.1:9901/livez"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("plain HTTP only"), "{}", text(&out.stderr));
}

#[test]
fn a_minted_token_is_accepted_by_a_running_fusebox() {
    let keys = support::temp_dir("token-key");
    let secret = keys.join("jwt-secret");
    std::fs::write(&secret, "an-example-secret-of-at-least-32-bytes!!").expect("write secret");
    let auth = format!("{{ jwt: {{ hs256SecretFile: {}, adminRole: ops }} }}", secret.display());
    let fb = Process::start("token", &yaml_with(&auth), &[]);
    let config = fb.config_path().display().to_string();

    let out = fusebox(&["token", "-c", &config, "--sub", "alice", "--ttl", "10m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token}");

    let path = "/api/admin/circuit-breaker/api/reset";
    let body = r#"{"reason":"token test"}"#;
    assert_eq!(http(fb.admin, "POST", path, None, body).0, 401, "no token");
    let (status, answer) = http(fb.admin, "POST", path, Some(&token), body);
    assert_eq!(status, 200, "{answer}");

    // A role other than adminRole is refused by fusebox, not by `token`.
    let out = fusebox(&["token", "-c", &config, "--sub", "bob", "--role", "viewer"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(http(fb.admin, "POST", path, Some(text(&out.stdout).trim()), body).0, 403);

    // `auth: none` has nothing to mint; a bad TTL is refused.
    let none = support::temp_dir("token-none").join("f.yaml");
    std::fs::write(&none, yaml_with("none")).expect("write");
    let out = fusebox(&["token", "-c", &none.display().to_string(), "--sub", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("auth: none"), "{}", text(&out.stderr));
    let out = fusebox(&["token", "-c", &config, "--sub", "a", "--ttl", "400d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(keys);
}

#[test]
fn token_refuses_a_public_key_config() {
    let dir = support::temp_dir("token-pubkey");
    // Any RSA public key in PEM: the config only checks it parses.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    let pem = match key {
        Ok(k) => k.public_key_pem(),
        // ring cannot generate RSA keys: take an EC one (ES256) instead.
        Err(_) => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key").public_key_pem(),
    };
    let pem_path = dir.join("pub.pem");
    std::fs::write(&pem_path, pem).expect("write pem");
    let config = dir.join("f.yaml");
    std::fs::write(&config, yaml_with(&format!("{{ jwt: {{ publicKeyFile: {}, adminRole: admin }} }}", pem_path.display())))
        .expect("write");
    let out = fusebox(&["token", "-c", &config.display().to_string(), "--sub", "a"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("public key") && stderr.contains("identity provider"), "{stderr}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef fusebox"), ("fish", "complete -c fusebox")] {
        let out = fusebox(&["completions", shell]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        assert!(stdout.contains(marker), "{shell}: {stdout}");
        for sub in ["healthcheck", "token", "schema", "version"] {
            assert!(stdout.contains(sub), "{shell} completes `{sub}`");
        }
    }
    assert_ne!(fusebox(&["completions", "tcsh"]).status.code(), Some(0));
    // bash accepts the script it is given.
    if let Ok(out) = Command::new("bash").args(["-n", "-c", &text(&fusebox(&["completions", "bash"]).stdout)]).output() {
        assert!(out.status.success(), "bash -n: {}", text(&out.stderr));
    }
}

#[test]
fn the_committed_schema_is_what_fusebox_schema_prints() {
    let out = fusebox(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let printed = text(&out.stdout);
    let schema: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fusebox.schema.json")).expect("docs/fusebox.schema.json");
    assert!(
        committed == printed,
        "docs/fusebox.schema.json is stale: run `cargo run -q -- schema > docs/fusebox.schema.json` after changing config/model.rs"
    );
}

#[test]
fn a_bare_port_listens_on_all_interfaces() {
    let dir = support::temp_dir("bare-port");
    let config = dir.join("f.yaml");
    // Port 0 on every interface: the ready line names 0.0.0.0.
    std::fs::write(&config, yaml_with("none").replace("listen: 127.0.0.1:0\n", "listen: \":0\"\n")).expect("write");
    let out = fusebox(&["check", "-c", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let fb = Process::start("bare-port", &std::fs::read_to_string(&config).expect("read"), &[]);
    assert_eq!(fb.data.ip().to_string(), "0.0.0.0", "{}", fb.log_text());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_negative_count_is_named_as_such() {
    let dir = support::temp_dir("negative");
    let config = dir.join("f.yaml");
    std::fs::write(
        &config,
        "upstreams:\n  api:\n    endpoints: [http://127.0.0.1:7001]\n    breaker: { failureThreshold: -3 }\nroutes:\n  - { match: { pathPrefix: / }, upstream: api }\n",
    )
    .expect("write");
    let out = fusebox(&["check", "-c", &config.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be a positive whole number, got -3"), "{stderr}");
    assert!(stderr.contains("upstreams.api.breaker.failureThreshold"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
