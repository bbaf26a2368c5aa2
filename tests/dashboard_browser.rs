//! The dashboard as a person uses it: headless Chromium (Debian's
//! `chromium` + `chromium-driver`, driven through chromedriver with
//! fantoccini) opens `/dashboard` on a JWT-protected fusebox, logs in with a
//! token, sees the upstream's card turn from closed to open when real
//! traffic fails, clicks reset and sees it close. At 1600x900 with five
//! circuits (one a per-operation circuit, one upstream with an ejected
//! endpoint) it also checks what a person sees: a grid that uses the
//! width, stable card order, whole transition reasons, charts seeded from
//! the history endpoint with axes, labelled controls, no fail% of 100
//! beside a reset circuit. Saves screenshots to `target/dashboard-1-loaded.png`,
//! `target/dashboard-2-open.png` and `target/dashboard.png` (after the reset).
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

/// `api` (the one tripped) and, beside it, `billing`, `users`, `catalog`
/// (two endpoints, one where nothing listens: it is ejected) with its
/// operation `catalog/search`.
fn jwt_config(api: &str, other: &str, dir: &Path) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let dead = closed_port();
    format!(
        "auth: {{ jwt: {{ hs256SecretFile: {} }} }}\n\
         upstreams:\n\
         \x20 api:\n    endpoints: [{api}]\n    breaker: {{ jitter: 0, failureThreshold: 3, resetTimeout: 60s }}\n\
         \x20 billing:\n    endpoints: [{other}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\n\
         \x20 users:\n    endpoints: [{other}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\n\
         \x20 catalog:\n    endpoints: [{other}, http://127.0.0.1:{dead}]\n    breaker: {{ jitter: 0, failureThreshold: 50 }}\n\
         \x20   outlierDetection: {{ consecutiveFailures: 1, baseEjectionTime: 120s }}\n\
         routes:\n\
         \x20 - {{ match: {{ pathPrefix: /billing }}, upstream: billing }}\n\
         \x20 - {{ match: {{ pathPrefix: /users }}, upstream: users }}\n\
         \x20 - {{ match: {{ pathPrefix: /search }}, upstream: catalog, operation: search, breaker: {{ failureThreshold: 3 }} }}\n\
         \x20 - {{ match: {{ pathPrefix: /catalog }}, upstream: catalog }}\n\
         \x20 - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        secret.display(),
    )
}

/// The cards' services in page order.
const ORDER: &str =
    "return [...document.querySelectorAll('section.card')].filter((c) => c.style.display !== 'none').map((c) => c.dataset.service)";

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
    let other = upstream("other").await;
    let app = fusebox(&jwt_config(&up.url(), &other.url(), &dir)).await;
    // Steady traffic to the others, so charts and rates have something.
    let data = app.data_addr();
    let traffic = tokio::spawn(async move {
        let c = client();
        loop {
            for path in ["/billing/a", "/users/b", "/catalog/c", "/search?q=1", "/billing/d"] {
                get(&c, &format!("http://{data}{path}")).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    // Calls before the page opens: its charts must show them (history).
    let c = client();
    for _ in 0..5 {
        get(&c, &format!("http://{}/x", app.data_addr())).await;
    }
    let driver = Driver::start().expect("chromedriver starts");

    let profile = dir.join("profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1600,900", "--hide-scrollbars",
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
    traffic.abort();
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
    // A 1600x900 viewport (the window's frame takes some of --window-size).
    let inner = js(b, "return [window.innerWidth, window.innerHeight]").await?;
    let (iw, ih) = (inner[0].as_u64().unwrap_or(1600) as u32, inner[1].as_u64().unwrap_or(900) as u32);
    b.set_window_size(1600 + 1600u32.saturating_sub(iw), 900 + 900u32.saturating_sub(ih)).await.map_err(err("window size"))?;

    // Without a token the server answers 4001: the login shows.
    b.wait().at_most(WAIT).for_element(Locator::Css("#overlay.show")).await.map_err(err("login overlay"))?;
    b.find(Locator::Id("token")).await.map_err(err("token input"))?.send_keys(&admin_token()).await.map_err(err("type token"))?;
    b.find(Locator::Id("login")).await.map_err(err("login button"))?.click().await.map_err(err("click login"))?;

    b.wait().at_most(WAIT).for_element(Locator::Css(&card("closed"))).await.map_err(err("closed card after login"))?;
    let conn = b.find(Locator::Id("conn")).await.map_err(err("conn"))?.text().await.map_err(err("conn text"))?;
    if conn != "connected" {
        return Err(format!("connection indicator says {conn:?}"));
    }
    // The charts are seeded from the history endpoint (the calls made
    // before the page opened), and a snapshot or two gives live rates.
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("section.card[data-service='api'] canvas[data-seeded='true']"))
        .await
        .map_err(err("api chart seeded from history"))?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    save(b, "dashboard-1-loaded.png").await?;
    let expected = json!(["api", "billing", "catalog", "catalog/search", "users"]);
    let order = js(b, ORDER).await?;
    if order != expected {
        return Err(format!("cards not in name order, operation under its upstream: {order}"));
    }
    layout_checks(b).await?;

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
    save(b, "dashboard-2-open.png").await?;
    let after = js(b, ORDER).await?;
    if after != expected {
        return Err(format!("cards moved on their own when api opened: {after}"));
    }
    layout_checks(b).await?;

    // Reset (the upstream is healthy again) closes it.
    up.set_status(200);
    b.find(Locator::Css("section.card[data-service='api'] button[data-action='reset']"))
        .await
        .map_err(err("reset button"))?
        .click()
        .await
        .map_err(err("click reset"))?;
    let closed = b.wait().at_most(WAIT).for_element(Locator::Css(&card("closed"))).await;
    // The next snapshot (every 5 s) is in too.
    tokio::time::sleep(Duration::from_secs(6)).await;
    save(b, "dashboard.png").await?;
    closed.map_err(|e| {
        format!("the card did not close after reset ({e}); is POST /api/admin/circuit-breaker/{{service}}/reset implemented?")
    })?;
    let rate = js(b, "return document.querySelector(\"section.card[data-service='api'] [data-num='failrate']\").textContent").await?;
    if rate == json!("100") {
        return Err("fail% still 100 beside a reset circuit with no new traffic".to_string());
    }
    Ok(())
}

/// What a person would see wrong at 1600x900: the checks behind the
/// user's report.
async fn layout_checks(b: &Client) -> Result<(), String> {
    // The grid uses the width: at least four columns, and no card leaves
    // more than a card's width empty at the right of the first row.
    let cols = js(b, "return getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length").await?;
    if cols.as_u64().unwrap_or(0) < 4 {
        return Err(format!("the grid has {cols} columns at 1600 px"));
    }
    let free = js(
        b,
        "const g = document.getElementById('grid').getBoundingClientRect(); \
         const right = Math.max(...[...document.querySelectorAll('section.card')].map((c) => c.getBoundingClientRect().right)); \
         return Math.round(g.right - right)",
    )
    .await?;
    if free.as_i64().unwrap_or(9999) > 40 {
        return Err(format!("{free} px left empty at the right of the grid"));
    }
    // Nothing cut off: no text in a card ends in an ellipsis or overflows
    // its box (transitions, reasons, endpoints, labels, the mode select).
    let clipped = js(
        b,
        "const bad = []; \
         for (const e of document.querySelectorAll('section.card .detail *, section.card .name')) { \
           if (e.children.length && e.tagName !== 'SELECT') continue; \
           if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible') bad.push(e.tagName + ': ' + e.textContent); \
         } \
         for (const s of document.querySelectorAll('section.card select')) { \
           const c = document.createElement('canvas').getContext('2d'); c.font = getComputedStyle(s).font; \
           const need = Math.max(...[...s.options].map((o) => c.measureText(o.text).width)); \
           if (s.clientWidth < need + 12) bad.push('select ' + s.clientWidth + ' < ' + Math.round(need)); \
         } \
         return bad",
    )
    .await?;
    if clipped.as_array().is_none_or(|a| !a.is_empty()) {
        return Err(format!("clipped: {clipped}"));
    }
    // Labels: the reason box has one; the numbers say what they count.
    let labelled = js(
        b,
        "const l = document.querySelector('label[for=reason]'); \
         const titles = [...document.querySelectorAll(\"section.card[data-service='api'] .nums [title]\")].map((e) => e.title); \
         return !!l && titles.includes('consecutive failures') && titles.includes('failed calls (total)') && titles.includes('failed recoveries')",
    )
    .await?;
    if labelled != json!(true) {
        return Err("reason box or number titles missing".to_string());
    }
    // Charts: time axis labels (HH:MM) and a y scale; the ejected
    // endpoint with its time; the operation under its upstream.
    let chart = js(b, "const c = document.querySelector(\"section.card[data-service='billing'] canvas\"); return [c.dataset.xticks, c.dataset.ymax, c.dataset.points]").await?;
    let ticks = chart[0].as_str().unwrap_or("");
    if ticks.split(' ').filter(|t| t.len() == 5 && t.as_bytes()[2] == b':').count() < 2 {
        return Err(format!("no time axis on the chart: {chart}"));
    }
    if chart[1].as_str().is_none_or(str::is_empty) || chart[2].as_str().and_then(|p| p.parse::<u32>().ok()).unwrap_or(0) == 0 {
        return Err(format!("no y scale or no data on the chart: {chart}"));
    }
    let ejected = js(b, "const e = document.querySelector(\"section.card[data-service='catalog'] .endpoints [data-state='ejected']\"); return e ? e.textContent : ''").await?;
    if !ejected.as_str().is_some_and(|t| t.contains("ejected until")) {
        return Err(format!("no ejected endpoint with its time on catalog: {ejected}"));
    }
    let ops = js(b, "return document.querySelector(\"section.card[data-service='catalog'] .ops\").textContent").await?;
    if !ops.as_str().is_some_and(|t| t.contains("search")) {
        return Err(format!("catalog does not list its operation: {ops}"));
    }
    Ok(())
}

async fn js(b: &Client, script: &str) -> Result<serde_json::Value, String> {
    b.execute(script, vec![]).await.map_err(|e| format!("script {script:?}: {e}"))
}

async fn save(b: &Client, name: &str) -> Result<(), String> {
    let png = b.screenshot().await.map_err(|e| format!("screenshot: {e}"))?;
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "target", name].iter().collect();
    std::fs::write(&path, png).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The fleet view (SPEC 10): with `fleet:` the dashboard lists every live
/// member of the fleet and what is open on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleets_members_in_chromium() {
    for tool in [CHROMIUM, CHROMEDRIVER, "/usr/bin/redis-server"] {
        if !Path::new(tool).exists() {
            println!("skipped: {tool} not found (apt-get install -y chromium chromium-driver redis-server)");
            return;
        }
    }
    let port = closed_port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let mut tries = 0;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tries += 1;
        assert!(tries < 500, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let up = upstream("api").await;
    let yaml = |member: &str| {
        format!(
            "fleet: {{ redis: 'redis://127.0.0.1:{port}/0', name: dash, member: {member}, heartbeat: 200ms }}\n{}",
            one_upstream(&up.url(), "failureThreshold: 5")
        )
    };
    let a = fusebox(&yaml("pod-a")).await;
    let b = fusebox(&yaml("pod-b")).await;
    let driver = Driver::start().expect("chromedriver starts");
    let dir = std::env::temp_dir().join(format!("fusebox-dashboard-fleet-{}", std::process::id()));
    let caps = json!({ "goog:chromeOptions": { "binary": CHROMIUM, "args": [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        format!("--user-data-dir={}", dir.display()),
    ] } });
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps.as_object().cloned().unwrap())
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromium session");
    let result: Result<Vec<String>, String> = async {
        let err = |what: &'static str| move |e: fantoccini::error::CmdError| format!("{what}: {e}");
        browser.goto(&format!("http://{}/dashboard", a.admin_addr())).await.map_err(err("open /dashboard"))?;
        browser.wait().at_most(WAIT).for_element(Locator::Css("#fleet.on")).await.map_err(err("the fleet view"))?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = js(&browser, "return [...document.querySelectorAll('#fleet-members tr')].map((r) => r.textContent)").await?;
            let rows: Vec<String> =
                rows.as_array().map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default();
            if rows.len() == 2 {
                return Ok(rows);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("two members expected in the fleet view, got {rows:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    let _ = browser.close().await;
    drop(driver);
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result.unwrap_or_else(|e| panic!("{e}"));
    assert!(rows[0].contains("pod-a") && rows[1].contains("pod-b"), "{rows:?}");
    a.shutdown().await;
    b.shutdown().await;
}
