//! The live config: an `ArcSwap` of the current [`Generation`], and reloads
//! that parse and validate a whole file, build the next generation and
//! start it (`Generation::start`) before swapping it in. An invalid
//! file changes nothing; its errors are logged, counted and kept for the
//! health endpoints. Reloads are serialized by a lock that the request path
//! never takes (it only does `ArcSwap::load`).
//!
//! Every trigger (file change, SIGHUP, admin call) goes through the
//! [`Reloader`]: one reload at a time, on the blocking pool, never on a
//! runtime worker that serves traffic; triggers that arrive while one runs
//! are coalesced into at most one more run. A reload that panics (parse or
//! build) is caught and reported as a failure like an invalid file.
//!
//! Must not: parse or build on an async task, hold the reload lock across
//! an await, or let a failed reload change the running generation.

use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use arc_swap::ArcSwap;

use crate::clock;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::runtime::{Generation, Shared};

/// The outcome of the last reload, for `/health/detailed`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_trigger: Option<String>,
    pub last_error: Option<ConfigErrors>,
    /// Changes that were left out because they need a restart.
    pub restart_needed: Vec<String>,
}

pub struct ConfigStore {
    current: Arc<ArcSwap<Generation>>,
    pub shared: Shared,
    path: Option<PathBuf>,
    status: Mutex<ReloadStatus>,
    /// Held while a reload builds, starts and swaps a generation.
    reloading: Mutex<()>,
}

// === impl ConfigStore ===

impl ConfigStore {
    /// Publishes `config` as generation 1.
    pub fn new(config: Config, path: Option<PathBuf>, shared: Shared) -> ConfigStore {
        shared.metrics.set_request_metrics(config.request_metrics);
        let generation = Generation::build(1, config, None, &shared, clock::now());
        generation.start(None, &shared);
        shared.metrics.config_generation.set(1);
        shared.metrics.last_reload_success.set(unix_now());
        let status = ReloadStatus {
            last_attempt: Some(SystemTime::now()),
            last_success: Some(SystemTime::now()),
            last_trigger: Some("startup".to_string()),
            ..ReloadStatus::default()
        };
        ConfigStore {
            current: Arc::new(ArcSwap::from_pointee(generation)),
            shared,
            path,
            status: Mutex::new(status),
            reloading: Mutex::new(()),
        }
    }

    /// The handle the data path loads generations from.
    pub fn handle(&self) -> Arc<ArcSwap<Generation>> {
        self.current.clone()
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Re-reads the config file and applies it if it is valid. Blocking:
    /// call it on a blocking thread (the [`Reloader`] does). A panic while
    /// parsing or building is caught and reported as a failed reload.
    pub fn reload(&self, trigger: &str) -> Result<u64, ConfigErrors> {
        let Some(path) = &self.path else {
            return Err(ConfigErrors {
                file: None,
                errors: vec![ConfigError::at_root("fusebox runs on a built-in config; there is no file to reload")],
            });
        };
        let _serial = self.reloading.lock();
        let built = catch_unwind(AssertUnwindSafe(|| Config::load(path).map(|config| self.build_locked(config))));
        match built {
            Ok(Ok(next)) => Ok(self.publish_locked(next, trigger)),
            Ok(Err(errors)) => Err(self.reject_locked(trigger, errors)),
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                let errors = ConfigErrors {
                    file: Some(path.clone()),
                    errors: vec![ConfigError::at_root(format!(
                        "the reload failed with an internal error (a bug; please report it): {what}"
                    ))],
                };
                Err(self.reject_locked(trigger, errors))
            }
        }
    }

    fn reject_locked(&self, trigger: &str, errors: ConfigErrors) -> ConfigErrors {
        self.shared.metrics.reloads.with_label_values(&["failure"]).inc();
        self.shared.metrics.last_reload_ok.set(0);
        // One line per event: every error of the file, `; `-separated.
        let file = errors.file.as_ref().map_or_else(String::new, |f| format!("{}: ", f.display()));
        let list: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
        tracing::error!(trigger, errors = list.len(), "config reload rejected, the running config is kept: {file}{}", list.join("; "));
        let mut st = self.status.lock();
        st.last_attempt = Some(SystemTime::now());
        st.last_trigger = Some(trigger.to_string());
        st.last_error = Some(errors.clone());
        errors
    }

    /// Publishes an already checked config as the next generation.
    pub fn apply(&self, config: Config, trigger: &str) -> u64 {
        let _serial = self.reloading.lock();
        let next = self.build_locked(config);
        self.publish_locked(next, trigger)
    }

    /// Builds the next generation (not yet visible to anyone).
    fn build_locked(&self, mut config: Config) -> (Generation, Vec<String>) {
        let previous = self.current.load_full();
        let restart_needed = keep_restart_only_settings(&mut config, &previous.config);
        let number = previous.number.saturating_add(1);
        (Generation::build(number, config, Some(&previous), &self.shared, clock::now()), restart_needed)
    }

    fn publish_locked(&self, (next, restart_needed): (Generation, Vec<String>), trigger: &str) -> u64 {
        for msg in &restart_needed {
            tracing::warn!("{msg}");
        }
        let number = next.number;
        self.shared.metrics.set_request_metrics(next.config.request_metrics);
        next.start(Some(&self.current.load()), &self.shared);
        self.current.store(Arc::new(next));
        self.shared.metrics.reloads.with_label_values(&["success"]).inc();
        self.shared.metrics.config_generation.set(i64::try_from(number).unwrap_or(i64::MAX));
        self.shared.metrics.last_reload_success.set(unix_now());
        self.shared.metrics.last_reload_ok.set(1);
        tracing::info!(generation = number, trigger, "config reloaded");
        let mut st = self.status.lock();
        st.last_attempt = Some(SystemTime::now());
        st.last_success = st.last_attempt;
        st.last_trigger = Some(trigger.to_string());
        st.last_error = None;
        st.restart_needed = restart_needed;
        number
    }

    /// The number of the running generation.
    pub fn generation(&self) -> u64 {
        self.current.load().number
    }
}

/// Listener addresses, worker count, TLS files and the store path cannot
/// change live: keep the running values and say a restart is needed.
fn keep_restart_only_settings(next: &mut Config, running: &Config) -> Vec<String> {
    let mut msgs = Vec::new();
    let mut keep = |name: &str, changed: bool| {
        if changed {
            msgs.push(format!("`{name}` changed: it needs a restart to take effect; the rest of the file was applied"));
        }
    };
    keep("listen", next.listen != running.listen);
    keep("admin.listen", next.admin.listen != running.admin.listen);
    keep("workers", next.workers != running.workers);
    keep("tls", next.tls != running.tls);
    keep("admin.tls", next.admin.tls != running.admin.tls);
    keep("store.path", next.store != running.store);
    keep("fleet", next.fleet != running.fleet);
    next.listen = running.listen;
    next.admin.listen = running.admin.listen;
    next.workers = running.workers;
    next.tls = running.tls.clone();
    next.admin.tls = running.admin.tls.clone();
    next.store = running.store.clone();
    next.fleet = running.fleet.clone();
    msgs
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// What one reload run answers to every trigger it served.
pub type ReloadResult = Result<u64, ConfigErrors>;

/// Runs reloads one at a time on the blocking pool and coalesces triggers:
/// every trigger that arrives while a reload runs joins the one pending
/// run, so a burst of any size while one runs costs at most one more run
/// (which reads the file as it is by then).
#[derive(Default)]
pub struct Reloader {
    queue: Mutex<Queue>,
    runs: AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// A driver is running (on the blocking pool).
    running: bool,
    next: Option<Pending>,
}

struct Pending {
    triggers: Vec<String>,
    waiters: Vec<oneshot::Sender<ReloadResult>>,
}

// === impl Reloader ===

impl Reloader {
    /// Asks for a reload; the answer is the result of the run that starts
    /// after this call (shared with the other triggers it coalesced). `run`
    /// does the reload; it is called on a blocking-pool thread (with the
    /// runtime entered, so it may spawn tasks), and is dropped unused when a
    /// run is already pending or running.
    pub fn request(
        self: &Arc<Self>,
        trigger: &str,
        run: impl Fn(&str) -> ReloadResult + Send + 'static,
    ) -> oneshot::Receiver<ReloadResult> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock();
            let pending = q.next.get_or_insert_with(|| Pending { triggers: Vec::new(), waiters: Vec::new() });
            if !pending.triggers.iter().any(|t| t == trigger) {
                pending.triggers.push(trigger.to_string());
            }
            pending.waiters.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let me = self.clone();
            let drive = move || me.drive(&run);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let inner = rt.clone();
                    drop(rt.spawn_blocking(move || {
                        let _enter = inner.enter();
                        drive();
                    }));
                }
                Err(_) => {
                    if let Err(e) = std::thread::Builder::new().name("fusebox-reload".into()).spawn(drive) {
                        tracing::error!(error = %e, "cannot start a reload thread");
                    }
                }
            }
        }
        rx
    }

    /// Reload runs so far (coalesced triggers count once).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    fn drive(&self, run: &dyn Fn(&str) -> ReloadResult) {
        loop {
            let pending = {
                let mut q = self.queue.lock();
                match q.next.take() {
                    Some(p) => p,
                    None => {
                        q.running = false;
                        return;
                    }
                }
            };
            self.runs.fetch_add(1, Ordering::Relaxed);
            let trigger = pending.triggers.join(", ");
            // `run` catches its own panics around parse and build; this one
            // keeps the driver (and the queue's `running` flag) sound if the
            // rest of it panics.
            let result = catch_unwind(AssertUnwindSafe(|| run(&trigger))).unwrap_or_else(|panic| {
                Err(ConfigErrors {
                    file: None,
                    errors: vec![ConfigError::at_root(format!(
                        "the reload failed with an internal error: {}",
                        panic_message(panic.as_ref())
                    ))],
                })
            });
            for waiter in pending.waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
