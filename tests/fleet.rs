//! A fleet of sidecars on a real redis-server (SPEC 10): in-process members
//! on one Redis started by each test on a free port (no persistence).
//! Checked: membership in `GET /api/admin/fleet`; an operator's force on
//! one member in force on the others within a second, audited once in the
//! fleet's stream; `?scope=local` stays local; a late joiner applies the
//! modes in force; a quorum of members' own evidence opens the fleet (rule
//! `fleet`) while one member alone does not; Redis killed: members keep
//! breaking alone and say `fleet: degraded`, then reconnect.
//!
//! Needs `redis-server` on PATH (`.ci/run` installs it); without it each
//! test says so and passes. Must not: leave a redis-server running.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{body_client, call, closed_port, eventually, fusebox, get, get_json, upstream};

/// A redis-server on a free port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Option<Redis> {
        Redis::on(closed_port())
    }

    fn on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            println!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        };
        // Up to 10 s (500 tries of 20 ms) for it to listen.
        let mut tries = 0;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            tries += 1;
            assert!(tries < 500, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis { port, child })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn fleet_yaml(redis: &Redis, name: &str, member: &str, endpoint: &str, breaker: &str) -> String {
    format!(
        "fleet: {{ redis: '{}', name: {name}, member: {member}, quorum: 2, heartbeat: 200ms }}\n\
         upstreams:\n  payments:\n    endpoints: [{endpoint}]\n    startupGrace: 0s\n    breaker: {{ jitter: 0, {breaker} }}\n  \
         search:\n    endpoints: [{endpoint}]\n    startupGrace: 0s\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: payments }}\n",
        redis.url()
    )
}

async fn fleet_view(app: &fusebox::App) -> Value {
    get_json(&support::client(), &format!("http://{}/api/admin/fleet", app.admin_addr())).await
}

async fn members_seen(app: &fusebox::App, n: usize) {
    eventually(Duration::from_secs(10), &format!("{n} members seen"), || async {
        let v = fleet_view(app).await;
        (v["connected"] == true && v["members"].as_array().is_some_and(|m| m.len() == n)).then_some(())
    })
    .await;
}

async fn force(app: &fusebox::App, circuit: &str, state: &str, query: &str) -> (StatusCode, String) {
    let url = format!("http://{}/api/admin/circuit-breaker/{circuit}/force{query}", app.admin_addr());
    let (s, _, body) = call(&body_client(), Method::POST, &url, &[], json!({ "state": state, "reason": "incident 42" }).to_string()).await;
    (s, body)
}

async fn state(app: &fusebox::App, circuit: &str) -> Value {
    support::circuit(&support::client(), app, circuit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_apply_on_every_member_and_late_joiners_take_them() {
    let Some(redis) = Redis::start() else { return };
    let up = upstream("payments").await;
    let a = fusebox(&fleet_yaml(&redis, "f1", "pod-a", &up.url(), "failureThreshold: 5")).await;
    let b = fusebox(&fleet_yaml(&redis, "f1", "pod-b", &up.url(), "failureThreshold: 5")).await;
    members_seen(&a, 2).await;
    members_seen(&b, 2).await;
    let v = fleet_view(&a).await;
    assert_eq!(v["enabled"], true, "{v}");
    assert_eq!(v["name"], "f1", "{v}");
    assert_eq!(v["member"], "pod-a", "{v}");
    let ids: Vec<&str> = v["members"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["pod-a", "pod-b"], "{v}");
    assert!(v["members"][1]["circuits"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == "payments")), "{v}");

    // A force on one member is in force on the other within a second.
    let (s, body) = force(&a, "payments", "forced-open", "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let started = tokio::time::Instant::now();
    eventually(Duration::from_secs(5), "forced-open on pod-b", || async {
        (state(&b, "payments").await["state"] == "forced-open").then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2), "in force on the other member after {:?}", started.elapsed());
    assert_eq!(get(&support::client(), &format!("http://{}/x", b.data_addr())).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // Audited once, in the fleet's stream, with the member that took it.
    let mut conn = redis.conn().await;
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("fusebox:f1:audit").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let fields: std::collections::HashMap<_, _> = entries[0].1.iter().cloned().collect();
    assert_eq!(fields.get("member").map(String::as_str), Some("pod-a"));
    assert!(fields.get("action").is_some_and(|a| a.contains("forced-open") && a.contains("incident 42")), "{fields:?}");

    // `?scope=local` stays on the member it was sent to.
    let (s, body) = force(&a, "search", "forced-open", "?scope=local").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(&b, "search").await["state"], "closed", "a local action stays local");

    // A member that joins later applies the modes in force first.
    let c = fusebox(&fleet_yaml(&redis, "f1", "pod-c", &up.url(), "failureThreshold: 5")).await;
    eventually(Duration::from_secs(5), "the late joiner applies forced-open", || async {
        (state(&c, "payments").await["state"] == "forced-open").then_some(())
    })
    .await;
    assert_eq!(state(&c, "search").await["state"], "closed");

    // A runtime override (PUT .../config) is fleet-wide too.
    let url = format!("http://{}/api/admin/circuit-breaker/search/config", a.admin_addr());
    let body = json!({ "failureThreshold": 7, "resetTimeoutMs": 30000, "minHealthyPeriodMs": 1000 }).to_string();
    let (s, _, text) = call(&body_client(), Method::PUT, &url, &[], body).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    for app in [&b, &c] {
        eventually(Duration::from_secs(5), "the override on every member", || async {
            let v = get_json(&support::client(), &format!("http://{}/api/admin/circuit-breaker/status", app.admin_addr())).await;
            let search = v["services"].as_array()?.iter().find(|s| s["service"] == "search")?.clone();
            (search["config"]["failureThreshold"] == 7).then_some(())
        })
        .await;
    }

    // Back to auto everywhere.
    let (s, body) = force(&b, "payments", "auto", "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for app in [&a, &c] {
        eventually(Duration::from_secs(5), "auto again", || async { (state(app, "payments").await["state"] == "closed").then_some(()) })
            .await;
    }
    for app in [a, b, c] {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_members_opens_the_fleet_and_one_member_alone_does_not() {
    let Some(redis) = Redis::start() else { return };
    let healthy = upstream("payments").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    // pod-a and pod-b have a broken path to payments; pod-c does not.
    let breaker = "failureThreshold: 2, resetTimeout: 30s";
    let a = fusebox(&fleet_yaml(&redis, "f2", "pod-a", &dead, breaker)).await;
    let b = fusebox(&fleet_yaml(&redis, "f2", "pod-b", &dead, breaker)).await;
    let c = fusebox(&fleet_yaml(&redis, "f2", "pod-c", &healthy.url(), breaker)).await;
    for app in [&a, &b, &c] {
        members_seen(app, 3).await;
    }
    let hit = |app: &fusebox::App| format!("http://{}/pay", app.data_addr());
    let client = support::client();
    for _ in 0..2 {
        assert_eq!(get(&client, &hit(&a)).await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(state(&a, "payments").await["state"], "open", "pod-a's own evidence");
    // One member alone never opens the fleet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state(&c, "payments").await["state"], "closed", "one member alone does not open the fleet");
    assert_eq!(get(&client, &hit(&c)).await.0, StatusCode::OK);

    // A second member's own evidence makes the quorum: every member opens.
    for _ in 0..2 {
        assert_eq!(get(&client, &hit(&b)).await.0, StatusCode::BAD_GATEWAY);
    }
    let started = tokio::time::Instant::now();
    let trip = eventually(Duration::from_secs(5), "pod-c opens on the fleet's verdict", || async {
        let s = state(&c, "payments").await;
        (s["state"] == "open").then(|| s["trip"].clone())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2), "verdict applied after {:?}", started.elapsed());
    assert_eq!(trip["rule"], "fleet", "{trip}");
    let detail = trip["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("2 of 3 members opened payments"), "{detail}");
    let (s, _, _) = call(&body_client(), Method::GET, &hit(&c), &[], "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "pod-c fails fast without spending its own requests");
    let (_, _, text) = get(&client, &format!("http://{}/metrics", c.admin_addr())).await;
    assert!(text.contains("fusebox_fleet_verdicts_total{upstream=\"payments\"} 1"), "{text}");
    assert!(text.contains("fusebox_fleet_connected 1"), "{text}");
    assert!(text.contains("fusebox_fleet_members 3"), "{text}");
    for app in [a, b, c] {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_members_break_alone_and_reconnect_when_it_is_back() {
    let Some(mut redis) = Redis::start() else { return };
    let port = redis.port;
    let up = upstream("payments").await;
    let a = fusebox(&fleet_yaml(&redis, "f3", "pod-a", &up.url(), "failureThreshold: 2")).await;
    let b = fusebox(&fleet_yaml(&redis, "f3", "pod-b", &up.url(), "failureThreshold: 2")).await;
    members_seen(&a, 2).await;
    redis.kill();
    let client = support::client();
    // Redis is never on the request path: every request is served.
    for i in 0..50 {
        let (s, _, body) = get(&client, &format!("http://{}/x", a.data_addr())).await;
        assert_eq!(s, StatusCode::OK, "request {i}: {body}");
    }
    let health = eventually(Duration::from_secs(10), "fleet: degraded", || async {
        let h = get_json(&client, &format!("http://{}/health/detailed", a.admin_addr())).await;
        (h["fleet"]["status"] == "degraded").then_some(h)
    })
    .await;
    assert!(health["fleet"]["lastError"]["message"].is_string(), "{health}");
    let (_, _, text) = get(&client, &format!("http://{}/metrics", a.admin_addr())).await;
    assert!(text.contains("fusebox_fleet_connected 0"), "{text}");
    // Breaking on its own evidence still works.
    up.set_status(500);
    for _ in 0..2 {
        assert_eq!(get(&client, &format!("http://{}/x", a.data_addr())).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(state(&a, "payments").await["state"], "open");
    up.set_status(200);

    // Redis back (empty: no persistence): both reconnect, and actions flow again.
    let _redis = Redis::on(port).expect("redis-server restarts");
    for app in [&a, &b] {
        eventually(Duration::from_secs(15), "reconnected", || async { (fleet_view(app).await["connected"] == true).then_some(()) }).await;
    }
    members_seen(&b, 2).await;
    let (s, body) = force(&b, "search", "forced-open", "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    eventually(Duration::from_secs(5), "the action reaches pod-a", || async {
        (state(&a, "search").await["state"] == "forced-open").then_some(())
    })
    .await;
    for app in [a, b] {
        app.shutdown().await;
    }
}

#[tokio::test]
async fn without_fleet_the_api_says_so() {
    let up = upstream("payments").await;
    let app = fusebox(&support::one_upstream(&up.url(), "")).await;
    let v = fleet_view(&app).await;
    assert_eq!(v["enabled"], false, "{v}");
    app.shutdown().await;
}

/// One trial per recovery: when the fleet's circuit is due for half-open,
/// one member wins the lease and sends the trial; the others keep failing
/// fast until it publishes the result, then close with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_sends_the_trial_of_a_recovery_and_the_others_follow_it() {
    let Some(redis) = Redis::start() else { return };
    let up = upstream("payments").await;
    up.set_status(500);
    let breaker = "failureThreshold: 2, resetTimeout: 1s, maxResetTimeout: 1s";
    let apps = [
        fusebox(&fleet_yaml(&redis, "f4", "pod-a", &up.url(), breaker)).await,
        fusebox(&fleet_yaml(&redis, "f4", "pod-b", &up.url(), breaker)).await,
        fusebox(&fleet_yaml(&redis, "f4", "pod-c", &up.url(), breaker)).await,
    ];
    for app in &apps {
        members_seen(app, 3).await;
    }
    let client = support::client();
    for app in &apps[..2] {
        for _ in 0..2 {
            assert_eq!(get(&client, &format!("http://{}/pay", app.data_addr())).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    eventually(Duration::from_secs(5), "pod-c opens on the verdict", || async {
        (state(&apps[2], "payments").await["state"] == "open").then_some(())
    })
    .await;
    // The upstream recovers; steady traffic on every member.
    up.set_status(200);
    let before = up.hits();
    let half_opened = std::sync::Mutex::new(std::collections::HashSet::new());
    eventually(Duration::from_secs(15), "every member closed again", || async {
        let mut closed = 0;
        for (i, app) in apps.iter().enumerate() {
            let _ = get(&client, &format!("http://{}/pay", app.data_addr())).await;
            let s = state(app, "payments").await;
            if s["lastTransition"]["from"] == "half-open" || s["state"] == "half-open" {
                half_opened.lock().unwrap().insert(i);
            }
            if s["state"] == "closed" {
                closed += 1;
            }
        }
        (closed == 3).then_some(())
    })
    .await;
    assert!(up.hits() > before, "the trial reached the upstream");
    let mut won = 0.0;
    let mut followed = 0;
    for app in &apps {
        let (_, _, text) = get(&client, &format!("http://{}/metrics", app.admin_addr())).await;
        won += text
            .lines()
            .find(|l| l.starts_with("fusebox_fleet_trial_leases_total{result=\"won\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let s = state(app, "payments").await;
        if s["lastTransition"]["rule"] == "fleet" && s["lastTransition"]["from"] == "open" {
            followed += 1;
        }
    }
    assert_eq!(won, 1.0, "one lease per recovery");
    let half_opened = half_opened.into_inner().unwrap();
    assert_eq!(half_opened.len(), 1, "one member went half-open: {half_opened:?}");
    assert_eq!(followed, 2, "the two others closed on the trial's result");
    for app in apps {
        app.shutdown().await;
    }
}
