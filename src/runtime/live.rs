//! The running process as the runtime layer sees it: the live config store,
//! readiness and draining flags, the one [`Reloader`] every reload trigger
//! goes through, and the periodic health checkers the current config needs.
//!
//! Shared by the data path's wiring (`app`) and the control plane
//! (`admin`, which adds its own state on top); it must not hold anything
//! only one of them uses.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use super::probe;
use super::reload::{ConfigStore, ReloadResult, Reloader};
use crate::config::{ConfigError, ConfigErrors};

pub struct Live {
    pub store: ConfigStore,
    /// Set once the listeners serve; `/readyz` answers from it.
    pub ready: AtomicBool,
    /// Set when shutdown begins: `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// Every upstream of `readiness.upstreams` has answered once: from then
    /// on readiness only follows draining.
    upstreams_ready: AtomicBool,
    pub started: SystemTime,
    /// Runs reloads one at a time, off the runtime workers, coalesced.
    pub reloader: Arc<Reloader>,
    /// Upstreams whose periodic health checker is running.
    checkers: Mutex<HashSet<String>>,
    /// The task that knocks on `readiness.upstreams` until each answered
    /// is running.
    knocking: AtomicBool,
}

// === impl Live ===

impl Live {
    pub fn new(store: ConfigStore) -> Live {
        Live {
            store,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            upstreams_ready: AtomicBool::new(false),
            started: SystemTime::now(),
            reloader: Arc::new(Reloader::default()),
            checkers: Mutex::new(HashSet::new()),
            knocking: AtomicBool::new(false),
        }
    }

    /// The upstreams of `readiness.upstreams` that have not answered yet
    /// (empty once all have: readiness then only follows draining).
    pub fn upstreams_not_ready(&self) -> Vec<String> {
        if self.upstreams_ready.load(Ordering::Acquire) {
            return Vec::new();
        }
        let generation = self.store.current();
        let waiting: Vec<String> = generation
            .config
            .readiness_upstreams
            .iter()
            .filter(|name| generation.upstreams.get(name.as_str()).is_none_or(|u| !u.circuit.has_answered()))
            .cloned()
            .collect();
        if waiting.is_empty() {
            self.upstreams_ready.store(true, Ordering::Release);
        }
        waiting
    }

    /// Reloads the config file on the calling thread; on success starts
    /// health checkers that the new config needs. Blocking, and needs a
    /// runtime entered: for blocking threads (the [`Reloader`]) and tests.
    pub fn reload(self: &Arc<Self>, trigger: &str) -> Result<u64, ConfigErrors> {
        // The operator's "look again": a store that lost its file re-opens
        // it, whatever the config file says.
        if let Some(store) = &self.store.shared.persist {
            store.reopen();
        }
        let n = self.store.reload(trigger)?;
        self.ensure_checkers();
        Ok(n)
    }

    /// Asks for a reload and waits for its result: parsed and built on the
    /// blocking pool, one at a time, coalesced with the triggers that
    /// arrive meanwhile. What the admin API calls.
    pub async fn reload_coalesced(self: &Arc<Self>, trigger: &str) -> ReloadResult {
        let answer = self.request_reload(trigger);
        answer.await.unwrap_or_else(|_| Err(ConfigErrors { file: None, errors: vec![ConfigError::at_root("the reload was abandoned")] }))
    }

    /// Asks for a reload without waiting (file changes, SIGHUP): parsing a
    /// large file must not stall the request path (with `workers: 1` it
    /// shares one thread), and a burst of triggers costs at most one more
    /// run than the one in progress.
    pub fn reload_in_background(self: &Arc<Self>, trigger: &'static str) {
        drop(self.request_reload(trigger));
    }

    fn request_reload(self: &Arc<Self>, trigger: &str) -> tokio::sync::oneshot::Receiver<ReloadResult> {
        // A weak handle: a pending reload does not keep a stopped app alive.
        let live = Arc::downgrade(self);
        self.reloader.request(trigger, move |trigger| match live.upgrade() {
            Some(live) => live.reload(trigger),
            None => Err(ConfigErrors { file: None, errors: vec![ConfigError::at_root("fusebox is stopping")] }),
        })
    }

    /// Starts a periodic health checker for every upstream that has a
    /// `healthCheck` and no checker yet (checkers end on their own when the
    /// upstream or its health check goes away).
    pub fn ensure_checkers(self: &Arc<Self>) {
        if !self.upstreams_not_ready().is_empty() && !self.knocking.swap(true, Ordering::AcqRel) {
            // Without traffic (a pod is not sent any until ready) and
            // without a health check, nothing would ever ask: knock.
            let live = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    let Some(l) = live.upgrade() else { return };
                    let waiting = l.upstreams_not_ready();
                    if waiting.is_empty() {
                        l.knocking.store(false, Ordering::Release);
                        return;
                    }
                    let generation = l.store.current();
                    drop(l);
                    for name in waiting {
                        if let Some(up) = generation.upstreams.get(&name).filter(|u| u.config.health_check.is_none()) {
                            probe::knock(up).await;
                        }
                    }
                    drop(generation);
                    tokio::time::sleep(probe::READINESS_KNOCK).await;
                }
            });
        }
        let generation = self.store.current();
        let mut running = self.checkers.lock();
        for (name, up) in &generation.upstreams {
            if up.config.health_check.is_some() && running.insert(name.clone()) {
                let live = self.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    probe::run_checks(live.store.handle(), name.clone()).await;
                    live.checkers.lock().remove(&name);
                });
            }
        }
    }
}
