//! Builds and runs everything: binds the data and admin listeners, publishes
//! the first generation, starts the servers and the circuit ticker, exposes
//! the bound addresses (tests bind port 0 and ask), and runs the shutdown
//! sequence: not ready -> drain delay -> stop accepting -> grace period.
//! With `store.path` set it opens the store first, puts back what it held
//! (overrides, operator modes, open circuits with their remaining wait,
//! history, audit) and keeps it written (periodically, after every
//! transition and operator action, and at shutdown).
//!
//! Reloads from every trigger (file change, SIGHUP, admin) go through one
//! coalescing [`Reloader`] that runs them on the blocking pool.
//!
//! [`preflight`] runs the file checks starting makes, with the same
//! functions (`tls::listener`, `store::check_path`), for `fusebox check`,
//! so it refuses what `run` would.
//!
//! It owns process-wide state ([`Live`]); it must not contain request
//! handling (that is `proxy` and `admin`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::breaker::Mode;
use crate::config::{AuthConfig, Config, ConfigError};
use crate::history::History;
use crate::proxy::forward::DataPlane;
use crate::proxy::server::{self, bind, ConnPolicy};
use crate::runtime::pool::REAP_EVERY;
use crate::runtime::reload::ConfigStore;
use crate::runtime::upstream::{CircuitEvent, SavedCounters};
use crate::runtime::watcher;
use crate::runtime::{Live, RuntimeOverride, Shared};
use crate::store::{Restored, Store, StoredTransition};
use crate::telemetry::Metrics;
use crate::tls;
use crate::{admin, clock};
use tokio_rustls::TlsAcceptor;

/// How often idle circuits are ticked (open -> half-open on time, expired
/// trial leases and overrides); idle upstream connections are swept every
/// `REAP_EVERY` from the same loop.
const TICK: Duration = Duration::from_millis(100);
/// Transition events buffered for slow watchers before they lag.
const EVENT_BUFFER: usize = 1024;
/// How often every circuit's history and mode are written to the store
/// (also on every operator action and at shutdown).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(15);

/// A running fusebox.
pub struct App {
    /// The runtime's live state (config store, readiness, reloads).
    pub state: Arc<Live>,
    /// The control plane's state on top of it.
    pub admin: Arc<AdminState>,
    /// Data-path workers on threads of their own: each resolves when its
    /// thread has drained and ended.
    worker_threads: Vec<oneshot::Receiver<()>>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop_data: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    data_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    ticker: JoinHandle<()>,
    /// The store's transition recorder and snapshot timer, and the watch
    /// on the auth key file.
    persist_tasks: Vec<JoinHandle<()>>,
    /// Config and certificate file watchers, alive as long as the app.
    _watchers: Vec<notify::RecommendedWatcher>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    // Transparent: the message already names the address; `{0}` plus its
    // source printed it twice.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    #[error("{0}")]
    Tls(crate::tls::TlsError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// The checks of the files `config` names that [`App::start`] makes before
/// it serves (the same functions): the data listener's certificate and key
/// parse into a TLS config, and the store path is usable. `fusebox check`
/// runs them so it refuses what `run` would; `text` (the file's, when
/// there is one) locates each problem at its key.
pub fn preflight(config: &Config, text: &str) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    for (at, t) in [("tls", &config.tls), ("admin.tls", &config.admin.tls)] {
        if let Some(t) = t {
            if let Err(e) = tls::listener(t) {
                let key = if e.path() == Some(t.key_file.as_path()) { "keyFile" } else { "certFile" };
                problems.push(ConfigError::located(text, &format!("{at}.{key}"), e.to_string()));
            }
        }
    }
    if let Some(path) = &config.store {
        if let Err(e) = crate::store::check_path(path) {
            problems.push(ConfigError::located(text, "store.path", e.to_string()));
        }
    }
    problems
}

// === impl App ===

impl App {
    /// Binds both listeners and starts serving `config`. `path` is the file
    /// reloads read (None for a built-in config).
    pub async fn start(config: Config, path: Option<PathBuf>) -> Result<App, AppError> {
        App::start_workers(config, path, 1).await
    }

    /// [`App::start`] with `workers` data-path workers: this task's runtime
    /// serves one, and every other is a thread of its own with a
    /// current-thread runtime and its own `SO_REUSEPORT` listener on the
    /// data address (nginx's worker model): a request stays on the thread
    /// that accepted it, with that worker's idle upstream connections.
    /// The admin listener, the ticker, health checks and reloads stay here.
    pub async fn start_workers(config: Config, path: Option<PathBuf>, workers: usize) -> Result<App, AppError> {
        let workers = workers.max(1);
        server::raise_nofile_limit();
        let data_listener = if workers > 1 { server::bind_shared(config.listen).await? } else { bind(config.listen).await? };
        let admin_listener = bind(config.admin.listen).await?;
        let data_addr = data_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        if config.auth == AuthConfig::None {
            tracing::warn!("!!! auth: none — the admin API and state WebSocket accept anyone who can reach {admin_addr}; configure auth.jwt for production !!!");
        }
        let grace = config.shutdown.grace_period;
        let tls = match &config.tls {
            Some(t) => {
                let (certs, server) = tls::listener(t).map_err(AppError::Tls)?;
                Some((certs, TlsAcceptor::from(server)))
            }
            None => None,
        };
        let admin_tls = match &config.admin.tls {
            Some(t) => {
                let (certs, server) = tls::admin_listener(t).map_err(AppError::Tls)?;
                Some((certs, TlsAcceptor::from(server)))
            }
            None => None,
        };
        let persist = match &config.store {
            Some(file) => Some(Store::open(file)?),
            None => {
                tracing::info!("no store.path: history, audit, overrides and modes live in memory only");
                None
            }
        };
        let (events, _) = broadcast::channel::<CircuitEvent>(EVENT_BUFFER);
        let mut shared = Shared::new(Metrics::new(), events);
        let persist = persist.map(|(store, restored)| {
            let store = Arc::new(store);
            store.count_write_errors_in(shared.metrics.store_write_errors.clone());
            restore_overrides(&shared, &config, &restored);
            shared.persist = Some(store.clone());
            (store, restored)
        });
        let state = Arc::new(Live::new(ConfigStore::new(config, path, shared)));
        let admin_state = Arc::new(AdminState::new(state.clone(), admin_addr));
        let mut persist_tasks = match persist {
            Some((store, restored)) => {
                restore_circuits(&state, &restored);
                restore_audit(&admin_state, restored.audit);
                tracing::info!(path = %store.path().display(), "store opened: history, audit, overrides and modes persist across restarts");
                vec![tokio::spawn(record_transitions(state.clone(), store.clone())), tokio::spawn(snapshot_circuits(state.clone(), store))]
            }
            None => Vec::new(),
        };
        state.ensure_checkers();
        let plane = Arc::new(DataPlane {
            store: state.store.handle(),
            scheme: if tls.is_some() { "https" } else { "http" },
            workers,
            open_connections: state.store.shared.metrics.open_connections("data"),
        });
        let mut watchers = Vec::new();
        let current = state.store.current();
        let listeners = [(&tls, current.config.tls.as_ref()), (&admin_tls, current.config.admin.tls.as_ref())];
        for (certs, t) in listeners.into_iter().filter_map(|(l, t)| Some((l.as_ref()?.0.clone(), t?))) {
            // cert-manager rewrites both files; watch each and re-read the
            // pair. Open connections keep the certificate they started with.
            for file in [t.cert_file.clone(), t.key_file.clone()] {
                let certs = certs.clone();
                match watcher::spawn_watcher(file.clone(), move || match certs.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one"),
                })
                .await
                {
                    Ok(w) => watchers.push(w),
                    Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot watch a TLS file; rotations need a restart"),
                }
            }
        }
        drop(current);

        let (stop_data, mut stop_data_rx) = watch::channel(false);
        let acceptor = tls.map(|(_, acceptor)| acceptor);
        let mut worker_threads = Vec::with_capacity(workers - 1);
        for index in 1..workers {
            let stop = stop_data.subscribe();
            worker_threads.push(start_worker(index, data_addr, plane.clone(), stop, grace, acceptor.clone()).await?);
        }
        let data_task = tokio::spawn(server::serve(
            data_listener,
            plane,
            async move {
                let _ = stop_data_rx.wait_for(|s| *s).await;
            },
            grace,
            acceptor,
        ));

        let (stop_admin, mut stop_admin_rx) = watch::channel(false);
        let admin_handle = admin_state.clone();
        let admin_task = tokio::spawn(server::accept_loop(
            admin_listener,
            async move {
                let _ = stop_admin_rx.changed().await;
            },
            Duration::from_secs(1),
            admin_tls.map(|(_, acceptor)| acceptor),
            {
                let generations = state.store.handle();
                (move || ConnPolicy::admin(&generations.load().config.client), state.store.shared.metrics.open_connections("admin"))
            },
            move |_peer, conn| {
                let st = admin_handle.clone();
                crate::proxy::conn::Tracked::new(service_fn(move |req| admin::handle(req, st.clone())), conn.clone())
            },
        ));

        let tick_state = state.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_reap = clock::now();
            loop {
                interval.tick().await;
                let now = clock::now();
                let generation = tick_state.store.current();
                for u in generation.upstreams.values() {
                    u.circuit.tick(now);
                    crate::runtime::probe::knock_if_open(u, now);
                }
                if now.saturating_duration_since(last_reap) >= REAP_EVERY {
                    last_reap = now;
                    // Operations share their upstream's endpoints: sweep those once.
                    for u in generation.upstreams.values().filter(|u| u.operation.is_none()) {
                        u.endpoints.reap_idle(now);
                    }
                }
            }
        });

        let config_watcher = match state.store.path().cloned() {
            Some(path) => {
                let watch_state = state.clone();
                match watcher::spawn_watcher(path.clone(), move || {
                    tracing::info!("config file changed: reloading");
                    watch_state.reload_in_background("file change");
                })
                .await
                {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
                        None
                    }
                }
            }
            None => None,
        };

        persist_tasks.push(tokio::spawn(watch_key_file(Arc::downgrade(&state))));
        // A fleet on Redis (SPEC 10): its own task; never on the request path.
        if let Some(config) = current_fleet(&state) {
            let metrics = crate::fleet::FleetMetrics::register(state.store.shared.metrics.registry());
            let fleet = crate::fleet::Fleet::new(config, metrics);
            let _ = admin_state.fleet.set(fleet.clone());
            persist_tasks.push(tokio::spawn(crate::fleet::run(fleet, Arc::downgrade(&state))));
        }
        state.ready.store(true, Ordering::Release);
        tracing::info!(data = %data_addr, admin = %admin_addr, workers, "fusebox is ready");
        watchers.extend(config_watcher);
        Ok(App {
            state,
            admin: admin_state,
            worker_threads,
            data_addr,
            admin_addr,
            stop_data,
            stop_admin,
            data_task,
            admin_task,
            ticker,
            persist_tasks,
            _watchers: watchers,
        })
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Graceful shutdown: `/readyz` fails at once, listeners stop accepting
    /// after the drain delay, in-flight requests get the grace period.
    pub async fn shutdown(self) {
        let cfg = self.state.store.current().config.clone();
        self.state.draining.store(true, Ordering::Release);
        tracing::info!(drain_delay = ?cfg.shutdown.drain_delay, grace = ?cfg.shutdown.grace_period, "shutting down: readyz now fails");
        tokio::time::sleep(cfg.shutdown.drain_delay).await;
        let _ = self.stop_data.send(true);
        let _ = self.data_task.await;
        for ended in self.worker_threads {
            let _ = ended.await;
        }
        self.ticker.abort();
        for task in &self.persist_tasks {
            task.abort();
        }
        save_circuits(&self.state).await;
        // State WebSocket clients get close 1001 before the admin listener goes.
        self.admin.ws.shutdown(Duration::from_secs(2)).await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!("fusebox stopped");
    }
}

/// Starts data-path worker `index` on a thread of its own: a
/// current-thread runtime serving its own `SO_REUSEPORT` listener on
/// `addr` until `stop`. Returns once the listener is bound (or with the
/// reason it could not be); the receiver resolves when the thread ends.
async fn start_worker(
    index: usize,
    addr: SocketAddr,
    plane: Arc<DataPlane>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    tls: Option<TlsAcceptor>,
) -> Result<oneshot::Receiver<()>, AppError> {
    let (bound_tx, bound_rx) = oneshot::channel::<std::io::Result<()>>();
    let (ended_tx, ended_rx) = oneshot::channel();
    std::thread::Builder::new().name(format!("fusebox-data-{index}")).spawn(move || {
        crate::runtime::pool::set_worker(index);
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = bound_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match server::bind_shared(addr).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            let _ = bound_tx.send(Ok(()));
            let stop = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            server::serve(listener, plane, stop, grace, tls).await;
        });
        let _ = ended_tx.send(());
    })?;
    bound_rx.await.unwrap_or_else(|_| Err(std::io::Error::other(format!("data worker {index} ended before it listened"))))?;
    Ok(ended_rx)
}

// === the store ===

/// Puts back the stored runtime overrides whose upstream YAML is unchanged
/// (a changed or removed upstream drops its override, as a reload does).
fn restore_overrides(shared: &Shared, config: &Config, restored: &Restored) {
    let mut overrides = shared.overrides.lock();
    for (name, stored) in &restored.overrides {
        match config.upstream(name).and_then(|base| RuntimeOverride::from_json(stored, base)) {
            Some(o) => {
                tracing::info!(upstream = %name, by = %o.applied_by, "runtime override restored from the store");
                overrides.insert(name.clone(), o);
            }
            None => tracing::info!(upstream = %name, "stored runtime override dropped: the upstream's YAML changed or it is gone"),
        }
    }
}

/// Puts back each circuit's automatic phase (an open circuit stays open for
/// the rest of its wait, with its recovery attempts and incidents; a
/// half-open one comes back open with no wait left, so it goes half-open at
/// once and admits only its trial requests), its history and its operator
/// mode (while its ttl has not run out).
fn restore_circuits(state: &Live, restored: &Restored) {
    let generation = state.store.current();
    let now = clock::now();
    let now_ms = crate::store::unix_ms(SystemTime::now());
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    // A wall-clock time of before the restart, on this process's clock.
    let instant = |wall_ms: Option<i64>| wall_ms.and_then(|t| now.checked_sub(ms(now_ms.saturating_sub(t))));
    for (name, saved) in &restored.phases {
        let Some(up) = generation.upstreams.get(name) else { continue };
        let counters: Option<SavedCounters> = saved.counters.as_deref().and_then(|c| match serde_json::from_str(c) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "stored counters unreadable: they start at zero");
                None
            }
        });
        let remaining_ms = match (saved.phase.as_str(), saved.open_until_ms) {
            ("open", Some(until)) if until > now_ms => Some(until - now_ms),
            ("open", Some(_)) | ("half-open", _) => Some(0),
            _ => None,
        };
        if let Some(remaining_ms) = remaining_ms {
            let waits = (ms(now_ms.saturating_sub(saved.saved_ms)), ms(remaining_ms));
            let trip = counters.as_ref().and_then(|c| c.trip.clone());
            up.circuit.with(|b| b.restore_open(waits, (saved.recovery_attempts, saved.total_incidents), trip, now));
            tracing::info!(
                upstream = %name,
                remaining_ms,
                recovery_attempts = saved.recovery_attempts,
                "open circuit restored from the store: it stays open for the rest of its wait"
            );
        }
        if let Some(c) = counters {
            let last = (instant(c.last_failure_ms), instant(c.last_success_ms));
            up.circuit.with(|b| b.restore_counters((c.total, c.successful, c.failed, c.rejected), last));
        }
    }
    for (name, saved) in &restored.circuits {
        let Some(up) = generation.upstreams.get(name) else { continue };
        match History::from_json(&saved.history) {
            Ok(h) => up.circuit.restore_history(h, saved.saved_ms, now),
            Err(e) => tracing::warn!(upstream = %name, error = %e, "stored history unreadable: starting afresh"),
        }
        if let Some((mode, ttl)) = crate::store::live_mode(saved, now_ms) {
            if let Some(mode) = Mode::parse(mode) {
                up.circuit.force(mode, ttl, "restored from the store after a restart", now);
                tracing::info!(upstream = %name, mode = mode.as_str(), "operator mode restored from the store");
            }
        }
    }
}

fn restore_audit(state: &AdminState, entries: Vec<serde_json::Value>) {
    let mut log = state.audit.lock();
    log.extend(entries);
    while log.len() > crate::store::AUDIT_RECENT {
        log.pop_front();
    }
}

/// Writes every transition (real and shadow) to the store, and the state of
/// its circuit right after it (a crash then loses no open period).
async fn record_transitions(state: Arc<Live>, store: Arc<Store>) {
    let mut events = state.store.shared.events.subscribe();
    loop {
        match events.recv().await {
            Ok(e) => {
                if let Some(up) = state.store.current().upstreams.get(&*e.upstream) {
                    up.circuit.save(&store);
                }
                store.transition(StoredTransition {
                    at_ms: crate::store::unix_ms(clock::wall(e.transition.at)),
                    upstream: e.upstream.to_string(),
                    from: e.transition.from.as_str().to_string(),
                    to: e.transition.to.as_str().to_string(),
                    rule: e.transition.reason.rule().to_string(),
                    reason: e.transition.reason.to_string(),
                    shadow: e.transition.shadow,
                });
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "store recorder fell behind: {n} transitions not stored");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Writes every circuit's history and mode every [`SNAPSHOT_EVERY`].
async fn snapshot_circuits(state: Arc<Live>, store: Arc<Store>) {
    let mut interval = tokio::time::interval(SNAPSHOT_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        for up in state.store.current().upstreams.values() {
            up.circuit.save(&store);
        }
    }
}

/// The last snapshot, at shutdown, and waits (briefly) for it to be on disk.
async fn save_circuits(state: &Live) {
    let Some(store) = state.store.shared.persist.clone() else { return };
    for up in state.store.current().upstreams.values() {
        up.circuit.save(&store);
    }
    let flushed = tokio::task::spawn_blocking(move || store.flush(Duration::from_secs(2))).await.unwrap_or(false);
    if !flushed {
        tracing::warn!("the store did not confirm the last snapshot within 2 s");
    }
}

/// Waits for SIGTERM or SIGINT, reloading the config on every SIGHUP. After
/// the first stop signal, a second one exits at once.
pub async fn until_signal(app: &App) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break }
            _ = int.recv() => { tracing::info!("SIGINT received"); break }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading config");
                app.state.reload_in_background("SIGHUP");
            }
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(130);
    });
}

fn current_fleet(state: &Live) -> Option<crate::config::FleetConfig> {
    state.store.current().config.fleet.clone()
}

/// Re-reads `auth.jwt`'s key file when it changes, like TLS certificates
/// (a Kubernetes Secret volume swaps the file on rotation): a change reloads
/// the config, which reads the key again, so tokens signed with the new key
/// pass and a bad new key keeps the old config with its error. The watch
/// follows the file the current config names, checked once a second.
async fn watch_key_file(live: std::sync::Weak<Live>) {
    let mut watched: Option<(PathBuf, Option<notify::RecommendedWatcher>)> = None;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(state) = live.upgrade() else { return };
        let current = state.store.current();
        let want = match &current.config.auth {
            AuthConfig::Jwt(jwt) => jwt.key.file().map(std::path::Path::to_path_buf),
            AuthConfig::None => None,
        };
        drop(current);
        drop(state);
        if watched.as_ref().map(|(path, _)| path) == want.as_ref() {
            continue;
        }
        watched = None;
        let Some(path) = want else { continue };
        let on_change = {
            let live = live.clone();
            move || {
                if let Some(state) = live.upgrade() {
                    tracing::info!("auth key file changed: reloading");
                    state.reload_in_background("key file change");
                }
            }
        };
        let watcher = match watcher::spawn_watcher(path.clone(), on_change).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch the auth key file; rotations need a reload");
                None
            }
        };
        watched = Some((path, watcher));
    }
}
