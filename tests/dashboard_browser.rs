//! The dashboard as a person uses it: headless Chromium (Debian's
//! `chromium` + `chromium-driver`, driven through chromedriver with
//! fantoccini) opens `/dashboard` on a JWT-protected fusebox, logs in with a
//! token, sees the upstream's card turn from closed to open when real
//! traffic fails, clicks reset and sees it close. Saves a screenshot to
//! `target/dashboard.png`.
//!
//! Skipped (with a clear message) when `/usr/bin/chromium` or
//! `/usr/bin/chromedriver` is missing: `apt-get install -y chromium
//! chromium-driver`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const SECRET: &[u8] = b"dashboard-browser-test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(15);

/// chromedriver on an ephemeral port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts chromedriver on port 0 and reads the port it reports.
    fn start() -> Result<Driver, String> {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let stdout = child.stdout.take().ok_or("no chromedriver stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    // "ChromeDriver was started successfully on port 36589."
                    if let Some(rest) = line.split("on port ").nth(1).filter(|_| line.contains("started successfully")) {
                        break rest.trim_end_matches('.').trim().parse::<u16>().map_err(|e| format!("bad port in {line:?}: {e}"))?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    return Err("chromedriver exited before reporting its port".to_string());
                }
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Driver { child, port })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jwt_config(upstream: &str, dir: &Path) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    format!(
        "auth: {{ jwt: {{ hs256SecretFile: {} }} }}\n{}",
        secret.display(),
        one_upstream(upstream, "failureThreshold: 3, resetTimeout: 60s")
    )
}

fn admin_token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "browser-test", "role": "admin", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn card(state: &str) -> String {
    format!("section.card[data-service='api'][data-state='{state}']")
}

#[tokio::test]
async fn dashboard_shows_a_trip_and_a_reset_in_chromium() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            println!(
                "skipped: {} not found (apt-get install -y chromium chromium-driver)",
                Path::new(tool).file_name().unwrap().to_string_lossy()
            );
            return;
        }
    }
    let dir = std::env::temp_dir().join(format!("fusebox-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let up = upstream("api").await;
    let app = fusebox(&jwt_config(&up.url(), &dir)).await;
    let driver = Driver::start().expect("chromedriver starts");

    let profile = dir.join("profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let caps = caps.as_object().cloned().unwrap();
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromium session");

    let result = scenario(&browser, &app, &up).await;
    let _ = browser.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn scenario(b: &Client, app: &fusebox::App, up: &TestUpstream) -> Result<(), String> {
    let err = |what: &'static str| move |e: fantoccini::error::CmdError| format!("{what}: {e}");
    b.goto(&format!("http://{}/dashboard", app.admin_addr())).await.map_err(err("open /dashboard"))?;

    // Without a token the server answers 4001: the login shows.
    b.wait().at_most(WAIT).for_element(Locator::Css("#overlay.show")).await.map_err(err("login overlay"))?;
    b.find(Locator::Id("token")).await.map_err(err("token input"))?.send_keys(&admin_token()).await.map_err(err("type token"))?;
    b.find(Locator::Id("login")).await.map_err(err("login button"))?.click().await.map_err(err("click login"))?;

    b.wait().at_most(WAIT).for_element(Locator::Css(&card("closed"))).await.map_err(err("closed card after login"))?;
    let conn = b.find(Locator::Id("conn")).await.map_err(err("conn"))?.text().await.map_err(err("conn text"))?;
    if conn != "connected" {
        return Err(format!("connection indicator says {conn:?}"));
    }

    // Real failing traffic trips the circuit; the card turns open.
    up.set_status(500);
    let c = client();
    for _ in 0..3 {
        get(&c, &format!("http://{}/x", app.data_addr())).await;
    }
    b.wait().at_most(WAIT).for_element(Locator::Css(&card("open"))).await.map_err(err("open card"))?;
    let eta =
        b.find(Locator::Css("section.card[data-service='api'] .eta")).await.map_err(err("eta"))?.text().await.map_err(err("eta text"))?;
    if !eta.starts_with("half-open in") {
        return Err(format!("no countdown to half-open: {eta:?}"));
    }
    let transitions = b
        .find(Locator::Css("section.card[data-service='api'] ul.transitions"))
        .await
        .map_err(err("transitions"))?
        .text()
        .await
        .map_err(err("transitions text"))?;
    if !transitions.contains("closed → open") || !transitions.contains("3 consecutive failures") {
        return Err(format!("transition with its reason not shown: {transitions:?}"));
    }
    save(b, "dashboard-open.png").await?;

    // Reset (the upstream is healthy again) closes it.
    up.set_status(200);
    b.find(Locator::Css("section.card[data-service='api'] button[data-action='reset']"))
        .await
        .map_err(err("reset button"))?
        .click()
        .await
        .map_err(err("click reset"))?;
    let closed = b.wait().at_most(WAIT).for_element(Locator::Css(&card("closed"))).await;
    save(b, "dashboard.png").await?;
    closed.map_err(|e| {
        format!("the card did not close after reset ({e}); is POST /api/admin/circuit-breaker/{{service}}/reset implemented?")
    })?;
    Ok(())
}

async fn save(b: &Client, name: &str) -> Result<(), String> {
    let png = b.screenshot().await.map_err(|e| format!("screenshot: {e}"))?;
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "target", name].iter().collect();
    std::fs::write(&path, png).map_err(|e| format!("write {}: {e}", path.display()))
}
