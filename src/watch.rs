//! `fusebox watch`: a terminal client of the state WebSocket. On a TTY it
//! keeps a live table redrawn in place (ANSI, a colour per circuit state)
//! that fits the terminal's width: `COLUMNS` if set, else `tput cols`, else
//! 80, read again when the terminal is resized (SIGWINCH). Too narrow, the
//! wide columns (last transition, service) narrow first, then the least
//! useful numbers go, and what still does not fit ends in "…". Piped, it
//! prints one plain line per change. Transition times are UTC (HH:MM:SS),
//! as the server sends them. It reconnects with
//! exponential backoff (1 s doubling to 30 s) and gives up only when the
//! server refuses the token.
//!
//! It owns nothing of the proxy: it must only speak the public protocol
//! (docs/websocket.md), exactly as any other client would.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderValue;
use serde_json::Value;

use crate::admin::view::{ServiceEntry, TransitionView};
use crate::text::escape_controls;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Default URL: the admin listener's default address.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:9901/api/v2/ws/circuit-breaker";
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server pings every 5 s; three missed heartbeats mean it is gone.
const SILENCE: Duration = Duration::from_secs(15);
/// Redraws of the TTY table at most this often.
const REDRAW: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub url: String,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("invalid WebSocket URL `{0}`: {1}")]
    Url(String, String),
    #[error("the token is not a valid header value")]
    Token,
    #[error("the server refused the token: {0}")]
    Auth(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Watches until the process is stopped (or the server refuses the token),
/// printing to stdout: a live table on a TTY, plain lines otherwise.
pub async fn run(options: WatchOptions) -> Result<(), WatchError> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    run_with(options, std::io::stdout(), tty).await
}

/// [`run`] with the output and its kind given (tests pass a buffer).
pub async fn run_with<W: Write>(options: WatchOptions, out: W, tty: bool) -> Result<(), WatchError> {
    let mut request = options.url.as_str().into_client_request().map_err(|e| WatchError::Url(options.url.clone(), e.to_string()))?;
    if let Some(token) = options.token.as_deref().filter(|t| !t.is_empty()) {
        let value = HeaderValue::from_str(token).map_err(|_| WatchError::Token)?;
        request.headers_mut().insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let columns = if tty { terminal_columns() } else { DEFAULT_COLUMNS };
    let mut view =
        View { out, tty, columns, url: options.url.clone(), services: BTreeMap::new(), last_seq: 0, gaps: 0, status: String::new() };
    let mut backoff = BACKOFF_START;
    loop {
        view.set_status(&format!("connecting to {}", view.url))?;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request.clone())).await;
        let reason = match connected {
            Ok(Ok((ws, _))) => {
                backoff = BACKOFF_START;
                view.last_seq = 0;
                view.set_status("connected")?;
                match view.follow(ws).await? {
                    Ended::AuthFailed(message) => return Err(WatchError::Auth(message)),
                    Ended::Lost(reason) => reason,
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        view.set_status(&format!("disconnected ({reason}); reconnecting in {}s", backoff.as_secs()))?;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Ended {
    AuthFailed(String),
    Lost(String),
}

/// Width of a table when nothing says otherwise.
const DEFAULT_COLUMNS: usize = 80;
/// Narrower than this, the table is not worth laying out: lines are cut.
const MIN_COLUMNS: usize = 20;

/// The terminal's width: `COLUMNS`, else `tput cols` when stdout is a
/// terminal (no ioctl: the crate forbids `unsafe`), else 80.
fn terminal_columns() -> usize {
    use std::io::IsTerminal;
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0) {
        return n;
    }
    if std::io::stdout().is_terminal() {
        // tput reads the size from the terminal on its stderr/stdin when
        // its stdout is our pipe.
        let out = std::process::Command::new("tput")
            .arg("cols")
            .stdin(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .output();
        if let Some(n) =
            out.ok().filter(|o| o.status.success()).and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<usize>().ok())
        {
            if n > 0 {
                return n;
            }
        }
    }
    DEFAULT_COLUMNS
}

/// One service as last seen.
struct Row {
    status: String,
    state: String,
    failure_count: u64,
    total: u64,
    successful: u64,
    failed: u64,
    recovery_attempts: u64,
    /// When an open circuit goes half-open, on our clock.
    half_open_at: Option<Instant>,
    last_transition: Option<String>,
    /// The upstream an operation's circuit belongs to (its own name
    /// otherwise) and the operation: rows sort by these, so an operation
    /// follows its upstream.
    upstream: String,
    operation: Option<String>,
    /// (total, failed) when the circuit last closed: FAIL% counts the calls
    /// since, the same calls its status is about.
    base: (u64, u64),
}

struct View<W: Write> {
    out: W,
    tty: bool,
    /// The table's width (TTY only).
    columns: usize,
    url: String,
    services: BTreeMap<String, Row>,
    last_seq: u64,
    gaps: u64,
    status: String,
}

// === impl View ===

impl<W: Write> View<W> {
    async fn follow<S>(&mut self, mut ws: S) -> Result<Ended, WatchError>
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let mut dirty = false;
        let mut auth_error: Option<String> = None;
        let mut redraw = tokio::time::interval(REDRAW);
        redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_draw = Instant::now();
        #[cfg(unix)]
        let mut resized = if self.tty { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok() } else { None };
        loop {
            #[cfg(unix)]
            let resize = async {
                match resized.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let resize = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = resize => {
                    self.columns = terminal_columns();
                    dirty = true;
                }
                next = tokio::time::timeout(SILENCE, ws.next()) => {
                    let msg = match next {
                        Err(_) => return Ok(Ended::Lost("no heartbeat for 15 s".to_string())),
                        Ok(None) => return Ok(Ended::Lost("connection closed".to_string())),
                        Ok(Some(Err(e))) => return Ok(Ended::Lost(e.to_string())),
                        Ok(Some(Ok(m))) => m,
                    };
                    match msg {
                        Message::Text(text) => {
                            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                            if v["type"] == "error" && v["code"] == 4001 {
                                auth_error = v["message"].as_str().map(str::to_owned);
                            }
                            dirty |= self.on_message(&v)?;
                        }
                        Message::Close(frame) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code));
                            if code == Some(4001) {
                                return Ok(Ended::AuthFailed(auth_error.unwrap_or_else(|| "authentication failed".to_string())));
                            }
                            let why = frame.map_or_else(|| "closed".to_string(), |f| format!("closed {}: {}", u16::from(f.code), f.reason));
                            return Ok(Ended::Lost(why));
                        }
                        _ => {}
                    }
                }
                _ = redraw.tick(), if self.tty => {
                    // Open circuits show a countdown: keep it ticking.
                    let counting = self.services.values().any(|r| r.state == "open");
                    if dirty || (counting && last_draw.elapsed() >= Duration::from_secs(1)) {
                        dirty = false;
                        last_draw = Instant::now();
                        self.draw()?;
                    }
                }
            }
        }
    }

    /// Applies one server message; true when the table changed.
    fn on_message(&mut self, v: &Value) -> Result<bool, WatchError> {
        if let Some(seq) = v["seq"].as_u64() {
            if self.last_seq != 0 && seq > self.last_seq + 1 {
                self.gaps += seq - self.last_seq - 1;
            }
            self.last_seq = seq;
        }
        match v["type"].as_str() {
            // A full list: the snapshot, or an update without `service`
            // (the answer to `subscribe:services`).
            Some("services:state") | Some("service:update") if v.get("service").is_none() => {
                let mut changed = Vec::new();
                let entries = v["services"].as_array().cloned().unwrap_or_default();
                let names: Vec<String> = entries.iter().filter_map(|e| e["service"].as_str().map(str::to_owned)).collect();
                self.services.retain(|k, _| names.contains(k));
                for e in &entries {
                    if let Some(name) = self.apply(e, None) {
                        changed.push(name);
                    }
                }
                if !self.tty {
                    for name in changed {
                        self.line(&name, None)?;
                    }
                }
                Ok(true)
            }
            Some("service:update") => {
                let transition = &v["data"]["transition"];
                // `services` holds every service: take the one updated.
                let entry = v["services"]
                    .as_array()
                    .and_then(|all| all.iter().find(|e| e["service"] == v["service"]))
                    .cloned()
                    .unwrap_or(Value::Null);
                let name = self.apply(&entry, Some(transition)).or_else(|| v["service"].as_str().map(str::to_owned));
                if let (false, Some(name)) = (self.tty, name) {
                    self.line(&name, Some(transition))?;
                }
                Ok(true)
            }
            Some("error") if !self.tty => {
                writeln!(self.out, "# error {}: {}", v["code"], escape_controls(v["message"].as_str().unwrap_or("")))?;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Stores one service entry; returns its name if its state or status
    /// changed (or it is new).
    fn apply(&mut self, e: &Value, transition: Option<&Value>) -> Option<String> {
        // The server's own shape (`admin::view`), read back.
        let entry: ServiceEntry = serde_json::from_value(e.clone()).ok()?;
        let name = entry.service.clone();
        if name.is_empty() {
            return None;
        }
        let c = &entry.circuit;
        let o = &entry.operations;
        let last_json = c.last_transition.as_ref().map(TransitionView::to_json);
        let last = transition.filter(|t| t.is_object()).or(last_json.as_ref());
        let (total, failed) = (o.total, o.failed);
        let old = self.services.get(&name);
        // A new transition out of the open states starts a new window.
        let closed_now = transition.filter(|t| t.is_object()).is_some_and(|t| !matches!(t["to"].as_str(), Some("open" | "forced-open")));
        let base = match old {
            Some(old) if !closed_now && total >= old.base.0 => old.base,
            Some(_) => (total, failed),
            None => (0, 0),
        };
        let row = Row {
            status: if entry.status.is_empty() { "unknown".to_string() } else { entry.status.clone() },
            state: if c.state.is_empty() { "unknown".to_string() } else { c.state.clone() },
            failure_count: c.failure_count,
            total,
            successful: o.successful,
            failed,
            recovery_attempts: c.recovery_attempts,
            half_open_at: c.retry_in_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            last_transition: last.map(|t| match transition_time(t) {
                Some(at) => format!("{at} {}", describe_transition(t)),
                None => describe_transition(t),
            }),
            upstream: if entry.upstream.is_empty() { name.clone() } else { entry.upstream.clone() },
            operation: entry.operation.clone(),
            base,
        };
        let changed = self.services.get(&name).is_none_or(|old| old.state != row.state || old.status != row.status);
        self.services.insert(name.clone(), row);
        changed.then_some(name)
    }

    /// One plain line (piped output).
    fn line(&mut self, name: &str, transition: Option<&Value>) -> Result<(), WatchError> {
        let Some(r) = self.services.get(name) else {
            return Ok(());
        };
        let now = crate::clock::timestamp();
        let what = match transition.filter(|t| t.is_object()) {
            Some(t) => match transition_time(t) {
                Some(at) => format!("{} at {at} UTC", describe_transition(t)),
                None => describe_transition(t),
            },
            None => format!("state {}", r.state),
        };
        // Everything but the counts came from the server: one line, whatever it sent.
        let text = format!(
            "{now} {name} {what} status={} failures={} total={} ok={} failed={} recoveries={}",
            r.status, r.failure_count, r.total, r.successful, r.failed, r.recovery_attempts
        );
        writeln!(self.out, "{}", escape_controls(&text))?;
        self.out.flush()?;
        Ok(())
    }

    fn set_status(&mut self, status: &str) -> Result<(), WatchError> {
        self.status = status.to_string();
        if self.tty {
            self.draw()
        } else {
            writeln!(self.out, "# {}", escape_controls(status))?;
            self.out.flush()?;
            Ok(())
        }
    }

    /// Redraws the whole table in place, as wide as the terminal.
    fn draw(&mut self) -> Result<(), WatchError> {
        let mut s = String::with_capacity(256 + self.services.len() * 160);
        s.push_str("\x1b[H\x1b[2J");
        let title = format!(
            "fusebox watch  times UTC  {}  services={} seq={} missed={}  {}",
            self.status,
            self.services.len(),
            self.last_seq,
            self.gaps,
            if self.status.contains(&self.url) { "" } else { &self.url }
        );
        s.push_str(&format!("\x1b[1m{}\x1b[0m\n\n", fit(&title, self.columns)));
        let now = Instant::now();
        let mut rows: Vec<(&String, &Row)> = self.services.iter().collect();
        rows.sort_by(|a, b| (&a.1.upstream, &a.1.operation, a.0).cmp(&(&b.1.upstream, &b.1.operation, b.0)));
        let cells: Vec<[String; COLS]> = rows
            .iter()
            .map(|(name, r)| {
                let since = r.total.saturating_sub(r.base.0);
                let rate = if since > 0 {
                    format!("{:.1}%", r.failed.saturating_sub(r.base.1) as f64 * 100.0 / since as f64)
                } else {
                    "-".to_string()
                };
                let retry = r
                    .half_open_at
                    .filter(|_| r.state == "open")
                    .map_or_else(|| "-".to_string(), |t| format!("{}s", t.saturating_duration_since(now).as_secs()));
                [
                    // An operation's row follows its upstream's: its name
                    // there is the operation's.
                    escape_controls(
                        &r.operation.as_ref().filter(|_| r.upstream != **name).map_or_else(|| name.to_string(), |op| format!("↳ {op}")),
                    )
                    .into_owned(),
                    r.state.clone(),
                    r.status.clone(),
                    r.failure_count.to_string(),
                    r.total.to_string(),
                    r.failed.to_string(),
                    rate,
                    r.recovery_attempts.to_string(),
                    retry,
                    r.last_transition.as_deref().map_or_else(|| "-".to_string(), |t| escape_controls(t).into_owned()),
                ]
            })
            .collect();
        let widths = layout(&cells, self.columns);
        let header: [String; COLS] = HEADERS.map(str::to_string);
        s.push_str("\x1b[2m");
        s.push_str(&render_row(&header, &widths, |_| ""));
        s.push_str("\x1b[0m\n");
        for (row, (_, r)) in cells.iter().zip(&rows) {
            s.push_str(&render_row(row, &widths, |i| match i {
                1 => state_colour(&r.state),
                2 => status_colour(&r.status),
                _ => "",
            }));
            s.push('\n');
        }
        self.out.write_all(s.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }
}

const COLS: usize = 10;
const HEADERS: [&str; COLS] =
    ["SERVICE", "STATE", "STATUS", "FAILS", "TOTAL", "FAILED", "FAIL%", "RECOV", "RETRY", "LAST TRANSITION (UTC)"];
/// Right-aligned (numbers).
const RIGHT: [bool; COLS] = [false, false, false, true, true, true, true, true, true, false];
/// Columns dropped, in this order, when narrowing is not enough.
const DROP_ORDER: [usize; 7] = [7, 4, 5, 3, 6, 8, 2];
const SERVICE: usize = 0;
const STATE: usize = 1;
const LAST: usize = 9;
const GAP: usize = 2;

/// Column widths (None: dropped) that fit `columns`: natural widths, then
/// the wide columns narrowed (last transition to 24, service to 12), then
/// columns dropped in `DROP_ORDER`, then narrowed further.
fn layout(cells: &[[String; COLS]], columns: usize) -> [Option<usize>; COLS] {
    let columns = columns.max(MIN_COLUMNS);
    let mut w: [Option<usize>; COLS] = [None; COLS];
    for (i, h) in HEADERS.iter().enumerate() {
        let natural = cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
        w[i] = Some(natural.max(h.chars().count()));
    }
    let total = |w: &[Option<usize>; COLS]| {
        let shown: Vec<usize> = w.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + GAP * shown.len().saturating_sub(1)
    };
    let shrink = |w: &mut [Option<usize>; COLS], i: usize, min: usize| {
        let over = total(w).saturating_sub(columns);
        if let Some(x) = w[i].as_mut() {
            *x = (*x).saturating_sub(over).max(min.min(*x));
        }
    };
    shrink(&mut w, LAST, 18);
    shrink(&mut w, SERVICE, 12);
    for i in DROP_ORDER {
        if total(&w) <= columns {
            break;
        }
        w[i] = None;
    }
    shrink(&mut w, LAST, 10);
    shrink(&mut w, SERVICE, 6);
    shrink(&mut w, STATE, 5);
    if total(&w) > columns {
        w[LAST] = None;
    }
    shrink(&mut w, SERVICE, 1);
    w
}

/// One line of the table: each shown cell fitted to its width (with "…"),
/// padded, coloured by `colour(column)`; never wider than the layout.
fn render_row(cells: &[String; COLS], widths: &[Option<usize>; COLS], colour: impl Fn(usize) -> &'static str) -> String {
    let mut line = String::new();
    let mut first = true;
    for (i, cell) in cells.iter().enumerate() {
        let Some(width) = widths[i] else { continue };
        if !first {
            line.push_str(&" ".repeat(GAP));
        }
        first = false;
        let text = fit(cell, width);
        let pad = " ".repeat(width - text.chars().count());
        let c = colour(i);
        if !c.is_empty() {
            line.push_str(c);
        }
        if RIGHT[i] {
            line.push_str(&pad);
            line.push_str(&text);
        } else {
            line.push_str(&text);
            // No trailing blanks on the last cell.
            if widths[i + 1..].iter().any(Option::is_some) {
                line.push_str(&pad);
            }
        }
        if !c.is_empty() {
            line.push_str("\x1b[0m");
        }
    }
    line
}

/// `text` cut to `width` characters, ending in "…" when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// HH:MM:SS (UTC) of a transition's `at` (RFC 3339, as the server sends).
fn transition_time(t: &Value) -> Option<&str> {
    let at = t["at"].as_str().or_else(|| t["timestamp"].as_str())?;
    let time = at.get(11..19)?;
    (at.as_bytes().get(10) == Some(&b'T') && time.as_bytes()[2] == b':').then_some(time)
}

fn describe_transition(t: &Value) -> String {
    let shadow = if t["shadow"].as_bool() == Some(true) { " (would, metrics-only)" } else { "" };
    format!(
        "{} -> {}{shadow} ({}: {})",
        t["from"].as_str().unwrap_or("?"),
        t["to"].as_str().unwrap_or("?"),
        t["rule"].as_str().or_else(|| t["reason"].as_str()).unwrap_or("?"),
        t["reason"].as_str().or_else(|| t["detail"].as_str()).unwrap_or("")
    )
}

fn state_colour(state: &str) -> &'static str {
    match state {
        "closed" => "\x1b[32m",
        "open" => "\x1b[1;31m",
        "half-open" => "\x1b[33m",
        "forced-open" => "\x1b[1;35m",
        "forced-closed" => "\x1b[36m",
        "metrics-only" => "\x1b[34m",
        _ => "\x1b[2m",
    }
}

fn status_colour(status: &str) -> &'static str {
    match status {
        "healthy" => "\x1b[32m",
        "degraded" => "\x1b[33m",
        "failed" => "\x1b[31m",
        _ => "\x1b[2m",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(out: &mut Vec<u8>) -> View<&mut Vec<u8>> {
        View { out, tty: false, columns: 80, url: String::new(), services: BTreeMap::new(), last_seq: 0, gaps: 0, status: String::new() }
    }

    #[test]
    fn what_the_server_sends_cannot_forge_a_line() {
        let mut out = Vec::new();
        let mut v = view(&mut out);
        v.set_status("gone\n12:00:00 api closed -> open").unwrap();
        let msg = json!({ "type": "error", "code": "x", "message": "bad\r\nforged line\x1b[31m" });
        v.on_message(&msg).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text:?}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
