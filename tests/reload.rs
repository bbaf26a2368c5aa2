//! Live configuration: file edits (write, rename-over, ConfigMap-style
//! symlink swap), invalid edits that change nothing, breaker state carried
//! across reloads, and a reload storm under load that fails no request.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fusebox::{App, Config};
use support::{client, get, get_json, upstream};

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fusebox-{tag}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn yaml(route_to: &str, a: &str, b: &str, extra_a: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nupstreams:\n  a:\n    endpoints: [{a}]\n    breaker: {{ jitter: 0, resetTimeout: 30s{extra_a} }}\n  b:\n    endpoints: [{b}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: {route_to} }}\n"
    )
}

async fn start(path: &Path) -> App {
    let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    App::start(config, Some(path.to_path_buf())).await.unwrap()
}

/// Polls `url` until its body starts with `want`, for at most 5 s; returns
/// how long it took.
async fn until_body(url: &str, want: &str) -> Duration {
    let c = client();
    let start = tokio::time::Instant::now();
    loop {
        let (_, _, body) = get(&c, url).await;
        if body.starts_with(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "still `{body}` after 5 s, wanted `{want}`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_write_is_picked_up() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("write");
    let path = dir.0.join("fusebox.yaml");
    std::fs::write(&path, yaml("a", &a.url(), &b.url(), "")).unwrap();
    let app = start(&path).await;
    let url = format!("http://{}/x", app.data_addr());
    assert_eq!(get(&client(), &url).await.2, "a /x");
    std::fs::write(&path, yaml("b", &a.url(), &b.url(), "")).unwrap();
    let took = until_body(&url, "b ").await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let health = get_json(&client(), &format!("http://{}/health/detailed", app.admin_addr())).await;
    assert_eq!(health["config"]["generation"], 2);
    assert_eq!(health["config"]["lastReload"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_rename_over_save_is_picked_up() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("rename");
    let path = dir.0.join("fusebox.yaml");
    std::fs::write(&path, yaml("a", &a.url(), &b.url(), "")).unwrap();
    let app = start(&path).await;
    let url = format!("http://{}/x", app.data_addr());
    let tmp = dir.0.join(".fusebox.yaml.swp");
    std::fs::write(&tmp, yaml("b", &a.url(), &b.url(), "")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(until_body(&url, "b ").await < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_picked_up() {
    // The kubelet's layout: fusebox.yaml -> ..data/fusebox.yaml, and
    // ..data -> ..<timestamp>, swapped atomically with a rename.
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("configmap");
    let v1 = dir.0.join("..2026_11_22_v1");
    let v2 = dir.0.join("..2026_11_22_v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("fusebox.yaml"), yaml("a", &a.url(), &b.url(), "")).unwrap();
    std::fs::write(v2.join("fusebox.yaml"), yaml("b", &a.url(), &b.url(), "")).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_v1", dir.0.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/fusebox.yaml", dir.0.join("fusebox.yaml")).unwrap();
    let path = dir.0.join("fusebox.yaml");
    let app = start(&path).await;
    let url = format!("http://{}/x", app.data_addr());
    assert_eq!(get(&client(), &url).await.2, "a /x");
    std::os::unix::fs::symlink("..2026_11_22_v2", dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
    assert!(until_body(&url, "b ").await < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_changes_nothing_and_says_where() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("invalid");
    let path = dir.0.join("fusebox.yaml");
    std::fs::write(&path, yaml("a", &a.url(), &b.url(), "")).unwrap();
    let app = start(&path).await;
    let url = format!("http://{}/x", app.data_addr());
    let admin = format!("http://{}", app.admin_addr());
    // Route to b, but with a typo'd key on line 7.
    let bad = yaml("b", &a.url(), &b.url(), ", failureTreshold: 3");
    std::fs::write(&path, &bad).unwrap();
    let c = client();
    let start = tokio::time::Instant::now();
    let health = loop {
        let h = get_json(&c, &format!("{admin}/health/detailed")).await;
        if h["config"]["lastReload"]["ok"] == false {
            break h;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "reload failure not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let err = &health["config"]["lastReload"]["errors"][0];
    assert_eq!(err["line"], 7, "{err}");
    assert!(err["message"].as_str().unwrap().contains("did you mean `failureThreshold`"), "{err}");
    assert_eq!(health["config"]["generation"], 1);
    assert_eq!(get(&c, &url).await.2, "a /x", "old config still serves");
    let (_, _, metrics) = get(&c, &format!("{admin}/metrics")).await;
    assert!(metrics.contains("fusebox_config_reloads_total{result=\"failure\"} 1"), "{metrics}");
    assert!(metrics.contains("fusebox_config_last_reload_successful 0"));
    // Fixing the file applies it.
    std::fs::write(&path, yaml("b", &a.url(), &b.url(), "")).unwrap();
    until_body(&url, "b ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_state_survives_a_reload_and_new_thresholds_apply() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("carry");
    let path = dir.0.join("fusebox.yaml");
    std::fs::write(&path, yaml("a", &a.url(), &b.url(), ", failureThreshold: 3")).unwrap();
    let app = start(&path).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    a.set_status(500);
    for _ in 0..3 {
        assert_eq!(get(&c, &url).await.0, 500);
    }
    assert_eq!(get(&c, &url).await.0, 503);
    // A reload that does not touch `a` (adds a route) keeps it open.
    let mut text = yaml("a", &a.url(), &b.url(), ", failureThreshold: 3");
    text = text.replace("routes:\n", "routes:\n  - { match: { pathPrefix: /b/ }, upstream: b }\n");
    std::fs::write(&path, &text).unwrap();
    until_body(&format!("http://{}/b/y", app.data_addr()), "b /b/y").await;
    let hits = a.hits();
    let (status, headers, _) = get(&c, &url).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-fusebox-circuit"], "open");
    assert_eq!(a.hits(), hits, "still open: the upstream sees nothing");
    // Reset it, then lower the threshold to 1: the next failure opens it.
    a.set_status(200);
    let resp = support::client()
        .request(
            http::Request::post(format!("http://{}/api/admin/circuit-breaker/a/reset", app.admin_addr()))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    // auth: none, but the body is missing: 400, the circuit stays open.
    assert_eq!(resp.status(), 400);
    app.state.store.current().upstreams["a"].circuit.reset("test", fusebox::clock::now());
    assert_eq!(get(&c, &url).await.0, 200);
    std::fs::write(&path, text.replace("failureThreshold: 3", "failureThreshold: 1")).unwrap();
    let start = tokio::time::Instant::now();
    while app.state.store.current().upstreams["a"].config.breaker.failure_threshold != 1 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.set_status(500);
    assert_eq!(get(&c, &url).await.0, 500);
    assert_eq!(get(&c, &url).await.0, 503, "one failure is enough now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_upstream_is_dropped_and_a_new_one_starts_closed() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("remove");
    let path = dir.0.join("fusebox.yaml");
    std::fs::write(&path, yaml("a", &a.url(), &b.url(), "")).unwrap();
    let app = start(&path).await;
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nupstreams:\n  c:\n    endpoints: [{}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: c }}\n",
        b.url()
    );
    std::fs::write(&path, text).unwrap();
    until_body(&format!("http://{}/z", app.data_addr()), "b /z").await;
    let cb = get_json(&client(), &format!("http://{}/health/circuit-breakers", app.admin_addr())).await;
    let names: Vec<&str> = cb["circuitBreakers"].as_array().unwrap().iter().map(|c| c["service"].as_str().unwrap()).collect();
    assert_eq!(names, ["c"]);
    assert_eq!(cb["circuitBreakers"][0]["state"], "closed");
    let (_, _, metrics) = get(&client(), &format!("http://{}/metrics", app.admin_addr())).await;
    assert!(!metrics.contains("fusebox_circuit_state{state=\"closed\",upstream=\"a\"}"), "series of a removed upstream are dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_changes_are_refused_but_the_rest_applies() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("restart");
    let path = dir.0.join("fusebox.yaml");
    std::fs::write(&path, yaml("a", &a.url(), &b.url(), "")).unwrap();
    let app = start(&path).await;
    let text = yaml("b", &a.url(), &b.url(), "").replace("listen: 127.0.0.1:0\nadmin", "listen: 127.0.0.1:1\nworkers: 3\nadmin");
    std::fs::write(&path, text).unwrap();
    until_body(&format!("http://{}/x", app.data_addr()), "b ").await;
    let h = get_json(&client(), &format!("http://{}/health/detailed", app.admin_addr())).await;
    let msgs = h["config"]["lastReload"]["restartNeeded"].to_string();
    assert!(msgs.contains("`listen` changed: it needs a restart"), "{msgs}");
    assert!(msgs.contains("`workers`"), "{msgs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_references_are_expanded_and_unset_ones_are_errors() {
    let a = upstream("a").await;
    std::env::set_var("FUSEBOX_TEST_RELOAD_UPSTREAM", a.url());
    let text =
        "upstreams:\n  a:\n    endpoints: [\"${FUSEBOX_TEST_RELOAD_UPSTREAM}\"]\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n";
    let config = fusebox::config::parse(text).unwrap();
    assert_eq!(format!("{}", config.upstreams[0].endpoints[0]), a.url());
    let err = fusebox::config::parse(&text.replace("RELOAD_UPSTREAM", "NEVER_SET_ANYWHERE")).unwrap_err();
    assert_eq!(err.errors[0].line, Some(3));
    assert!(err.errors[0].message.contains("FUSEBOX_TEST_NEVER_SET_ANYWHERE"), "{err}");
}

/// Many concurrent clients while the config is reloaded 60 times, valid
/// and invalid alternately: no request fails or reaches the wrong upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_fails_no_request() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dir = TempDir::new("storm");
    let path = dir.0.join("fusebox.yaml");
    let valid = |n: usize| {
        // Each valid version changes a breaker setting of `a` and the
        // endpoints of `b`, so every generation really differs.
        yaml("a", &a.url(), &b.url(), &format!(", failureThreshold: {}", 5 + n % 7))
    };
    std::fs::write(&path, valid(0)).unwrap();
    let app = start(&path).await;
    let url = format!("http://{}/storm", app.data_addr());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (url, stop, ok) = (url.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _, body) = get(&c, &url).await;
                if status != 200 || body != "a /storm" {
                    bad.push(format!("{status} {body}"));
                } else {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            bad
        }));
    }
    let mut generations = 1;
    for n in 1..=60 {
        if n % 2 == 0 {
            std::fs::write(&path, valid(n)).unwrap();
            generations = app.state.reload("test").unwrap();
        } else {
            std::fs::write(&path, valid(n).replace("routes:", "routes: [oops")).unwrap();
            assert!(app.state.reload("test").is_err());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(generations >= 31, "generation {generations}");
    assert!(ok.load(Ordering::Relaxed) > 100, "too little traffic: {}", ok.load(Ordering::Relaxed));
}
