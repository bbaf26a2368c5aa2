//! The seeds' own client logic, transcribed faithfully, against a real
//! fusebox over a real WebSocket:
//!
//! - the integration guide's `CircuitBreakerMonitor`: connects with the
//!   token as the subprotocol, sends `subscribe:services` on open, handles
//!   only `connection:status`, `service:update` and `error`, and on
//!   `service:update` walks `message.services` (here: keeps them as its
//!   list, the way its dashboard shows them);
//! - the dashboard requirements seed's handler: reads `service` + `data`
//!   of each `service:update` and keeps a map of services;
//! - the architecture seed's `WebSocketMessage`: reads the flat `status`
//!   and `circuit_breaker` fields.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"seed-clients-test-secret-0123456789abcdef";
static FILES: AtomicUsize = AtomicUsize::new(0);

fn token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "ops", "role": "admin", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// Two upstreams, `payments` and `search`, behind JWT auth.
async fn start(payments: &str, search: &str) -> fusebox::App {
    let path = std::env::temp_dir().join(format!("fusebox-seed-secret-{}-{}", std::process::id(), FILES.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, SECRET).unwrap();
    fusebox(&format!(
        "auth: {{ jwt: {{ hs256SecretFile: {} }} }}\nupstreams:\n  payments:\n    endpoints: [{payments}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\n  search:\n    endpoints: [{search}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\nroutes:\n  - {{ match: {{ pathPrefix: /pay }}, upstream: payments }}\n  - {{ match: {{ pathPrefix: / }}, upstream: search }}\n",
        path.display()
    ))
    .await
}

/// What the three seed clients hold after each message.
#[derive(Default)]
struct SeedClients {
    /// The integration guide's list (`message.services`).
    guide: Vec<Value>,
    /// The dashboard seed's map (`service` -> `data`).
    dashboard: BTreeMap<String, Value>,
    /// The architecture seed's last flat fields (`service` -> status, circuit_breaker).
    architecture: BTreeMap<String, (Value, Value)>,
    statuses: Vec<String>,
}

impl SeedClients {
    fn handle(&mut self, message: &Value) {
        match message["type"].as_str() {
            Some("connection:status") => self.statuses.push(message["status"].as_str().unwrap_or("").to_string()),
            Some("service:update") => {
                // CircuitBreakerMonitor.handleServiceUpdate: message.services.forEach(...)
                let services = message["services"].as_array().expect("every service:update carries services[]");
                for s in services {
                    assert!(s["service"].is_string() && s["status"].is_string() && s["circuit"]["state"].is_string(), "{s}");
                }
                self.guide = services.clone();
                // The dashboard seed: service + data.
                if let Some(name) = message["service"].as_str() {
                    let data = &message["data"];
                    for key in ["status", "circuit", "operations"] {
                        assert!(!data[key].is_null(), "data.{key} missing: {message}");
                    }
                    self.dashboard.insert(name.to_string(), data.clone());
                    // The architecture seed: flat fields.
                    assert!(message["circuit_breaker"]["isOpen"].is_boolean(), "{message}");
                    self.architecture.insert(name.to_string(), (message["status"].clone(), message["circuit_breaker"].clone()));
                }
            }
            Some("error") => panic!("error message: {message}"),
            // The guide's client ignores every other type.
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_three_seed_clients_work_unchanged() {
    let payments = upstream("payments").await;
    let search = upstream("search").await;
    let app = start(&payments.url(), &search.url()).await;

    // new WebSocket(url, token): the token is the subprotocol.
    let mut req = format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr()).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", token().parse().unwrap());
    let (mut ws, resp) = timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req)).await.unwrap().unwrap();
    assert!(resp.headers().contains_key("sec-websocket-protocol"), "the subprotocol is echoed, or browsers drop the socket");
    // handleOpen: subscribe.
    ws.send(Message::Text(json!({ "type": "subscribe:services" }).to_string())).await.unwrap();

    let mut clients = SeedClients::default();
    // The answer to subscribe: the guide's list holds every service.
    let until = Instant::now() + Duration::from_secs(5);
    while clients.guide.len() < 2 {
        let msg = timeout(until.saturating_duration_since(Instant::now()), ws.next()).await.expect("in time").unwrap().unwrap();
        if let Message::Text(t) = msg {
            clients.handle(&serde_json::from_str(&t).unwrap());
        }
    }
    assert_eq!(clients.statuses, ["connected"]);

    // payments fails: each client sees it within a second, and the
    // guide's list still holds both services.
    payments.set_status(500);
    let c = client();
    for _ in 0..3 {
        get(&c, &format!("http://{}/pay", app.data_addr())).await;
    }
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let open = clients.dashboard.get("payments").is_some_and(|d| d["circuit"]["state"] == "open");
        if open {
            break;
        }
        let msg = timeout(until.saturating_duration_since(Instant::now()), ws.next()).await.expect("the trip within 1 s").unwrap().unwrap();
        if let Message::Text(t) = msg {
            clients.handle(&serde_json::from_str(&t).unwrap());
        }
    }
    let names: Vec<&str> = clients.guide.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(names, ["payments", "search"], "the guide's list never shrinks to one service");
    let paying = clients.guide.iter().find(|s| s["service"] == "payments").unwrap();
    assert_eq!(paying["circuit"]["state"], "open");
    assert_eq!(clients.dashboard["payments"]["status"], "failed");
    let (status, cb) = &clients.architecture["payments"];
    assert_eq!(status, "failed");
    assert_eq!(cb["isOpen"], true);
    assert_eq!(cb["failures"], 3);
}
