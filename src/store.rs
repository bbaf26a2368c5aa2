//! The embedded store of README: Persistence: one SQLite file (`store.path`)
//! with every circuit transition and the health/operation history of each
//! upstream (7-day retention for transitions), the audit log, runtime config
//! overrides and operator modes, so that all of them survive a restart.
//!
//! Writes go through a bounded queue ([`QUEUE`]) to one writer thread that
//! commits them in batches; a full queue drops the write with a warning and
//! a metric instead of blocking anyone. Nothing on the request path writes
//! here: transitions, admin actions and a periodic history snapshot do.
//! An audit entry is the exception to fire-and-forget: [`Store::audit_durable`]
//! answers once the entry is committed (or with the error), and the admin
//! side applies a mutation only after that answer. A failed commit (full
//! disk, I/O error) is never silent: it is logged, counted
//! (`fusebox_store_write_errors_total`), kept as the last error, and the
//! store reports itself degraded until a later commit succeeds.
//! Everything is read back once, at startup ([`Restored`]), and transitions
//! on demand for the admin history endpoint (on a blocking thread).
//!
//! A durable audit write commits by its deadline or not at all (the lock
//! wait is bounded by it; a transaction still open past it is rolled
//! back), so "not committed" is never followed by a late commit. The
//! writer notices when its file is lost under it (the database or its log
//! deleted, replaced or truncated, checked before every commit and every
//! 5 s; `PRAGMA quick_check` every minute): the store is then `degraded`,
//! durable writes fail (mutations answer 503) and nothing is written until
//! it is re-opened by SIGHUP or a config reload (a new, empty file when it
//! was deleted: what it held is gone, and the log says so).
//!
//! Must not: block an async task on the disk, hold a lock while writing, or
//! lose the old data when the file cannot be opened (startup then fails
//! with the path and the reason).

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection};
use serde_json::Value;

/// Writes waiting for the writer thread; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Transitions older than this are deleted.
pub const TRANSITION_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Audit entries kept in the file (the newest).
pub const AUDIT_KEEP: i64 = 10_000;
/// Audit entries the admin API keeps in memory, and so the number read
/// back at startup.
pub const AUDIT_RECENT: usize = 1000;
/// Writes committed in one transaction at most.
const BATCH: usize = 512;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    upstream TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    shadow INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_upstream ON transitions (upstream, at_ms);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (
    upstream TEXT PRIMARY KEY,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS circuits (
    upstream TEXT PRIMARY KEY,
    saved_ms INTEGER NOT NULL,
    mode TEXT NOT NULL,
    mode_until_ms INTEGER,
    history TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS circuit_phases (
    upstream TEXT PRIMARY KEY,
    saved_ms INTEGER NOT NULL,
    phase TEXT NOT NULL,
    open_until_ms INTEGER,
    recovery_attempts INTEGER NOT NULL,
    total_incidents INTEGER NOT NULL,
    counters TEXT
);
";

/// The layout [`SCHEMA`] and [`migrate`] give a file (`PRAGMA
/// user_version`). 0: the first layout (no saved counters); 1: counters
/// and the trip reason of each circuit (`circuit_phases.counters`).
pub const SCHEMA_VERSION: i64 = 1;

/// Brings a file of an older layout forward, in place, and stamps it.
/// A file of a newer layout (a downgrade) is used as it is, with a
/// warning: the columns this version knows are all there.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        tracing::warn!(version, known = SCHEMA_VERSION, "the store file was written by a newer fusebox; using the columns this one knows");
        return Ok(());
    }
    let has_counters = conn.prepare("SELECT counters FROM circuit_phases LIMIT 0").is_ok();
    if !has_counters {
        conn.execute_batch("ALTER TABLE circuit_phases ADD COLUMN counters TEXT")?;
        tracing::info!(from = version, to = SCHEMA_VERSION, "store file migrated: circuits keep their counters and trip reason");
    }
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
}

/// One circuit transition, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTransition {
    pub at_ms: i64,
    pub upstream: String,
    pub from: String,
    pub to: String,
    pub rule: String,
    pub reason: String,
    pub shadow: bool,
}

/// A circuit's saved state: its operator mode and its history.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedCircuit {
    pub saved_ms: i64,
    pub mode: String,
    pub mode_until_ms: Option<i64>,
    pub history: String,
}

/// The automatic phase of a circuit when it was saved: an open (or
/// half-open) circuit comes back open for the rest of its wait, with its
/// recovery attempts and incident count.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedPhase {
    pub saved_ms: i64,
    /// `closed`, `open` or `half-open`.
    pub phase: String,
    /// Wall-clock end of the open wait (open only).
    pub open_until_ms: Option<i64>,
    pub recovery_attempts: u32,
    pub total_incidents: u64,
    /// The circuit's counters, times and trip reason (JSON of
    /// `runtime::upstream::SavedCounters`); None in files of layout 0.
    pub counters: Option<String>,
}

/// What the store held at startup.
#[derive(Debug, Default)]
pub struct Restored {
    /// Runtime overrides by upstream (the JSON the admin side wrote).
    pub overrides: Vec<(String, Value)>,
    pub circuits: Vec<(String, SavedCircuit)>,
    pub phases: Vec<(String, SavedPhase)>,
    /// The newest audit entries, oldest first.
    pub audit: Vec<Value>,
}

enum Op {
    Transition(StoredTransition),
    Audit {
        at_ms: i64,
        entry: String,
    },
    /// The whole set of overrides (replaces what is stored).
    Overrides(Vec<(String, String)>),
    Circuit(String, SavedCircuit),
    Phase(String, SavedPhase),
    /// An audit entry whose writer waits for the commit. The commit that
    /// holds it must end by `deadline`, or nothing of it is committed: the
    /// writer's answer is the truth (no commit after the waiter gave up).
    DurableAudit {
        at_ms: i64,
        entry: String,
        deadline: std::time::Instant,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Re-open the file if the store lost it (SIGHUP, a reload).
    Reopen,
    /// Answered once everything queued before it is committed.
    Flush(mpsc::Sender<()>),
}

/// The handle the rest of fusebox writes through. Cheap to share.
pub struct Store {
    path: PathBuf,
    tx: SyncSender<Op>,
    dropped: AtomicU64,
    health: Arc<WriteHealth>,
    /// The writer thread; it ends when the last handle (and `tx`) is gone.
    _writer: JoinHandle<()>,
}

/// What the writer thread reports about its commits.
#[derive(Default)]
struct WriteHealth {
    errors: AtomicU64,
    /// True while the last commit failed, or the file is lost.
    degraded: AtomicBool,
    /// The file was deleted, replaced or truncated under the store (or
    /// failed its integrity check): nothing is committed until it is
    /// re-opened ([`Store::reopen`]).
    lost: AtomicBool,
    last_error: Mutex<Option<(SystemTime, String)>>,
    /// `fusebox_store_write_errors_total`, once the app registered it.
    counter: Mutex<Option<prometheus::IntCounter>>,
}

/// The store's write health, for `/health/detailed`.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    pub degraded: bool,
    pub write_errors: u64,
    pub dropped_writes: u64,
    pub last_error: Option<(SystemTime, String)>,
}

/// Why a durable write did not commit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct WriteError(pub String);

#[derive(Debug, thiserror::Error)]
#[error("store {path}: {message}")]
pub struct StoreError {
    path: String,
    message: String,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the file, reads what it holds and starts the
    /// writer thread. The parent directory must exist.
    pub fn open(path: &Path) -> Result<(Store, Restored), StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError { path: path.display().to_string(), message: e.to_string() };
        check_path(path)?;
        let conn = Connection::open(path).map_err(|e| fail(&e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| fail(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| fail(&e))?;
        migrate(&conn).map_err(|e| fail(&e))?;
        let restored = read_all(&conn).map_err(|e| fail(&e))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let health = Arc::new(WriteHealth::default());
        let writer_health = health.clone();
        let file = FileIdentity::of(path);
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("fusebox-store".into())
            .spawn(move || write_loop(Writer { conn, path: writer_path, file }, rx, &writer_health))
            .map_err(|e| fail(&e))?;
        Ok((Store { path: path.to_path_buf(), tx, dropped: AtomicU64::new(0), health, _writer: writer }, restored))
    }

    /// Counts failed commits in `counter` from now on (and the ones so far).
    pub fn count_write_errors_in(&self, counter: prometheus::IntCounter) {
        counter.inc_by(self.health.errors.load(Ordering::Relaxed));
        *self.health.counter.lock() = Some(counter);
    }

    /// Write errors, drops and whether the store is degraded now.
    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            degraded: self.health.degraded.load(Ordering::Relaxed),
            write_errors: self.health.errors.load(Ordering::Relaxed),
            dropped_writes: self.dropped(),
            last_error: self.health.last_error.lock().clone(),
        }
    }

    /// Writes one audit entry and waits (at most `limit`) until it is
    /// committed. An error means it is not in the file: the caller must not
    /// apply the change it describes. Never blocks the thread: a full queue
    /// is retried with async sleeps.
    pub async fn audit_durable(&self, at: SystemTime, entry: &Value, limit: Duration) -> Result<(), WriteError> {
        const STEP: Duration = Duration::from_millis(5);
        let (done, answer) = tokio::sync::oneshot::channel();
        let deadline = real_now().checked_add(limit).unwrap_or_else(real_now);
        let mut op = Op::DurableAudit { at_ms: unix_ms(at), entry: entry.to_string(), deadline, done };
        let started = tokio::time::Instant::now();
        loop {
            match self.tx.try_send(op) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if started.elapsed() < limit => {
                    op = back;
                    tokio::time::sleep(STEP).await;
                }
                Err(TrySendError::Full(_)) => return Err(WriteError("the store's write queue stayed full".into())),
                Err(TrySendError::Disconnected(_)) => return Err(WriteError("the store's writer has stopped".into())),
            }
        }
        // The writer answers by the deadline (its commit is bounded by it);
        // this wait is longer only so a wedged disk cannot hang the caller.
        match tokio::time::timeout(limit.saturating_mul(2).saturating_add(Duration::from_secs(1)), answer).await {
            Ok(Ok(result)) => result.map_err(WriteError),
            Ok(Err(_)) => Err(WriteError("the store's writer has stopped".into())),
            Err(_) => Err(WriteError(format!("the store did not answer within {} ms", limit.as_millis()))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the writer to re-open the file if it was lost (a new, empty
    /// file when it was deleted): what SIGHUP and every config reload do.
    pub fn reopen(&self) {
        if self.health.lost.load(Ordering::Acquire) {
            let _ = self.tx.try_send(Op::Reopen);
        }
    }

    /// Writes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn transition(&self, t: StoredTransition) {
        self.send(Op::Transition(t));
    }

    pub fn audit(&self, at: SystemTime, entry: &Value) {
        self.send(Op::Audit { at_ms: unix_ms(at), entry: entry.to_string() });
    }

    /// Replaces the stored overrides with `all`.
    pub fn overrides(&self, all: Vec<(String, Value)>) {
        self.send(Op::Overrides(all.into_iter().map(|(k, v)| (k, v.to_string())).collect()));
    }

    pub fn circuit(&self, upstream: &str, saved: SavedCircuit) {
        self.send(Op::Circuit(upstream.to_string(), saved));
    }

    pub fn phase(&self, upstream: &str, saved: SavedPhase) {
        self.send(Op::Phase(upstream.to_string(), saved));
    }

    /// Waits (at most `limit`) until everything queued so far is on disk.
    pub fn flush(&self, limit: Duration) -> bool {
        const STEP: Duration = Duration::from_millis(5);
        let (done, wait) = mpsc::channel();
        // A flush must not be dropped: wait for room, briefly.
        let mut op = Op::Flush(done);
        let mut waited = Duration::ZERO;
        loop {
            match self.tx.try_send(op) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if waited < limit => {
                    op = back;
                    std::thread::sleep(STEP);
                    waited += STEP;
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(limit.saturating_sub(waited)).is_ok()
    }

    /// Transitions of `upstream` since `since_ms`, newest last, at most
    /// `limit`. Opens its own read connection: call it on a blocking thread.
    pub fn transitions(&self, upstream: &str, since_ms: i64, limit: usize) -> Result<Vec<StoredTransition>, StoreError> {
        let fail = |e: rusqlite::Error| StoreError { path: self.path.display().to_string(), message: e.to_string() };
        let conn = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(fail)?;
        let mut stmt = conn
            .prepare(
                "SELECT at_ms, upstream, from_state, to_state, rule, reason, shadow FROM (
                     SELECT * FROM transitions WHERE upstream = ?1 AND at_ms >= ?2 ORDER BY at_ms DESC, id DESC LIMIT ?3
                 ) ORDER BY at_ms, id",
            )
            .map_err(fail)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![upstream, since_ms, limit], |r| {
                Ok(StoredTransition {
                    at_ms: r.get(0)?,
                    upstream: r.get(1)?,
                    from: r.get(2)?,
                    to: r.get(3)?,
                    rule: r.get(4)?,
                    reason: r.get(5)?,
                    shadow: r.get::<_, i64>(6)? != 0,
                })
            })
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn send(&self, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(path = %self.path.display(), "store queue full: a write was dropped (the disk is slower than the events)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether `path` can hold the store, without touching it: an existing
/// path must be a regular file fusebox may read and write (an SQLite file
/// or empty), and its directory must exist and take new files (SQLite
/// writes `-wal` and `-shm` beside it). `Store::open` checks this first;
/// `fusebox check` runs it alone.
pub fn check_path(path: &Path) -> Result<(), StoreError> {
    let fail = |message: String| StoreError { path: path.display().to_string(), message };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(fail(format!("{} is not a directory", dir.display()))),
        Err(e) => return Err(fail(format!("directory {}: {e}", dir.display()))),
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(fail("not a regular file".to_string())),
        Ok(m) => {
            use std::io::Read;
            let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| fail(e.to_string()))?;
            let mut head = [0u8; 16];
            if m.len() > 0 && (file.read_exact(&mut head).is_err() || &head != b"SQLite format 3\0") {
                return Err(fail("not an SQLite database".to_string()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    // Only creating a file shows the directory takes one (modes, ACLs,
    // read-only mounts and root all differ).
    let probe = dir.join(format!(".fusebox-store-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        // Left by an earlier process of the same id: files were created.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(fail(format!("cannot create files in {}: {e}", dir.display()))),
    }
}

/// The clock the writer thread measures disk waits with: it runs outside
/// tokio, so tokio's (pausable) clock is not its clock, and a durable
/// write's deadline bounds real time spent on the disk.
#[allow(clippy::disallowed_methods)]
fn real_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> i64 {
    i64::try_from(crate::clock::unix_millis(at)).unwrap_or(i64::MAX)
}

fn read_all(conn: &Connection) -> rusqlite::Result<Restored> {
    let mut restored = Restored::default();
    let mut stmt = conn.prepare("SELECT upstream, entry FROM overrides ORDER BY upstream")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (name, entry) = row?;
        match serde_json::from_str(&entry) {
            Ok(v) => restored.overrides.push((name, v)),
            Err(e) => tracing::warn!(upstream = %name, error = %e, "stored override unreadable: ignored"),
        }
    }
    let mut stmt = conn.prepare("SELECT upstream, saved_ms, mode, mode_until_ms, history FROM circuits ORDER BY upstream")?;
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, SavedCircuit { saved_ms: r.get(1)?, mode: r.get(2)?, mode_until_ms: r.get(3)?, history: r.get(4)? }))
    })? {
        restored.circuits.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT upstream, saved_ms, phase, open_until_ms, recovery_attempts, total_incidents, counters FROM circuit_phases ORDER BY upstream",
    )?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            SavedPhase {
                saved_ms: r.get(1)?,
                phase: r.get(2)?,
                open_until_ms: r.get(3)?,
                recovery_attempts: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                total_incidents: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                counters: r.get(6)?,
            },
        ))
    })? {
        restored.phases.push(row?);
    }
    let mut stmt = conn.prepare("SELECT entry FROM (SELECT id, entry FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id")?;
    for row in stmt.query_map([i64::try_from(AUDIT_RECENT).unwrap_or(i64::MAX)], |r| r.get::<_, String>(0))? {
        if let Ok(v) = serde_json::from_str(&row?) {
            restored.audit.push(v);
        }
    }
    Ok(restored)
}

/// How often the writer checks, with nothing to write, that its file is
/// still the one it opened.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the writer runs `PRAGMA quick_check` on its file.
const QUICK_CHECK_EVERY: Duration = Duration::from_secs(60);
/// The connection's lock wait when no durable write bounds it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer thread's connection and what it knows of its file.
struct Writer {
    conn: Connection,
    path: PathBuf,
    file: FileIdentity,
}

/// The store file and its write-ahead log as the writer last saw them:
/// (device, inode) of each, and the log's length. SQLite never shrinks its
/// log while fusebox holds the database open, so a shorter log, another
/// inode or a missing file means someone else changed them: what is
/// committed may be gone.
#[derive(Debug, Clone, Copy, Default)]
struct FileIdentity {
    db: Option<(u64, u64)>,
    wal: Option<(u64, u64)>,
    wal_len: u64,
}

// === impl FileIdentity ===

impl FileIdentity {
    fn of(path: &Path) -> FileIdentity {
        let wal = wal_path(path);
        FileIdentity { db: inode(path), wal: inode(&wal), wal_len: std::fs::metadata(&wal).map_or(0, |m| m.len()) }
    }

    /// Whether the files are still the ones the writer committed to.
    fn check(&self, path: &Path) -> Result<(), String> {
        let now = FileIdentity::of(path);
        match (self.db, now.db) {
            (Some(_), None) => return Err("the store file was deleted under fusebox".to_string()),
            (Some(a), Some(b)) if a != b => return Err("the store file was replaced under fusebox".to_string()),
            _ => {}
        }
        match (self.wal, now.wal) {
            (Some(_), None) => Err("the store's write-ahead log was deleted under fusebox".to_string()),
            (Some(a), Some(b)) if a != b => Err("the store's write-ahead log was replaced under fusebox".to_string()),
            (Some(_), Some(_)) if now.wal_len < self.wal_len => {
                Err(format!("the store's write-ahead log was truncated under fusebox ({} -> {} bytes)", self.wal_len, now.wal_len))
            }
            _ => Ok(()),
        }
    }

    /// After the writer's own commit: the log may have grown or appeared;
    /// the database file is the one checked before.
    fn after_commit(&mut self, path: &Path) {
        let now = FileIdentity::of(path);
        self.wal = now.wal;
        self.wal_len = now.wal_len;
        if self.db.is_none() {
            self.db = now.db;
        }
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

#[cfg(unix)]
fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}

// === impl Writer ===

impl Writer {
    /// A fresh connection to the file at the path (a new, empty store
    /// when it was deleted).
    fn reopen(&mut self) -> Result<(), String> {
        check_path(&self.path).map_err(|e| e.to_string())?;
        let conn = Connection::open(&self.path).map_err(|e| e.to_string())?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
        conn.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
        migrate(&conn).map_err(|e| e.to_string())?;
        self.conn = conn;
        self.file = FileIdentity::of(&self.path);
        Ok(())
    }

    fn quick_check(&self) -> Result<(), String> {
        match self.conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
            Ok(ok) if ok == "ok" => Ok(()),
            Ok(problem) => Err(format!("the store file failed its integrity check: {problem}")),
            Err(e) => Err(format!("the store file failed its integrity check: {e}")),
        }
    }
}

/// The store lost its file: nothing more is committed (durable writes
/// answer an error, so mutations answer 503) until it is re-opened.
fn lose(health: &WriteHealth, why: String) {
    if !health.lost.swap(true, Ordering::AcqRel) {
        tracing::error!(error = %why, "store lost: nothing more is written until it is re-opened (SIGHUP or a config reload)");
        health.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = health.counter.lock().as_ref() {
            c.inc();
        }
    }
    health.degraded.store(true, Ordering::Relaxed);
    *health.last_error.lock() = Some((SystemTime::now(), why));
}

/// The writer thread: commits queued writes in batches until every
/// [`Store`] handle is gone, and checks its file between them (identity
/// each time, `quick_check` every [`QUICK_CHECK_EVERY`]).
fn write_loop(mut w: Writer, rx: Receiver<Op>, health: &WriteHealth) {
    // Wall clock: this thread is outside tokio, and a prune only needs to
    // happen now and then.
    let mut last_prune = SystemTime::UNIX_EPOCH;
    let mut last_quick_check = real_now();
    loop {
        let first = match rx.recv_timeout(FILE_CHECK_EVERY) {
            Ok(op) => Some(op),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::new();
        if let Some(first) = first {
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
        }
        if batch.iter().any(|op| matches!(op, Op::Reopen)) && health.lost.load(Ordering::Acquire) {
            match w.reopen() {
                Ok(()) => {
                    tracing::warn!(path = %w.path.display(), "store re-opened: what the lost file held is gone; writing again");
                    health.lost.store(false, Ordering::Release);
                    health.degraded.store(false, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(path = %w.path.display(), error = %e, "store re-open failed: still lost"),
            }
        }
        if !health.lost.load(Ordering::Acquire) {
            let mut verdict = w.file.check(&w.path);
            if verdict.is_ok() && last_quick_check.elapsed() >= QUICK_CHECK_EVERY {
                last_quick_check = real_now();
                verdict = w.quick_check();
            }
            if let Err(why) = verdict {
                lose(health, why);
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut flushed = Vec::new();
        let mut durable = Vec::new();
        let result = if health.lost.load(Ordering::Acquire) {
            take_replies(batch, &mut flushed, &mut durable);
            let why = health.last_error.lock().as_ref().map_or_else(|| "the store file was lost".to_string(), |(_, e)| e.clone());
            Err(format!("{why}; re-open it with SIGHUP or a config reload"))
        } else {
            let result = commit(&mut w.conn, batch, &mut flushed, &mut durable);
            w.file.after_commit(&w.path);
            match &result {
                Ok(()) => health.degraded.store(false, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, lost = durable.len(), "store write failed: this batch is lost; the store is degraded");
                    health.errors.fetch_add(1, Ordering::Relaxed);
                    health.degraded.store(true, Ordering::Relaxed);
                    *health.last_error.lock() = Some((SystemTime::now(), e.clone()));
                    if let Some(c) = health.counter.lock().as_ref() {
                        c.inc();
                    }
                }
            }
            result
        };
        for (_, done) in durable {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| format!("the audit entry could not be written: {e}")));
        }
        if !health.lost.load(Ordering::Acquire)
            && SystemTime::now().duration_since(last_prune).map_or(true, |d| d > Duration::from_secs(600))
        {
            last_prune = SystemTime::now();
            if let Err(e) = prune(&w.conn) {
                tracing::warn!(error = %e, "store prune failed");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

type Durable = (std::time::Instant, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Takes the reply handles out of `batch` (durable writers into `durable`,
/// flushes into `flushed`) and returns the writes.
fn take_replies(batch: Vec<Op>, flushed: &mut Vec<mpsc::Sender<()>>, durable: &mut Vec<Durable>) -> Vec<Op> {
    batch
        .into_iter()
        .filter_map(|op| match op {
            Op::DurableAudit { at_ms, entry, deadline, done } => {
                durable.push((deadline, done));
                Some(Op::Audit { at_ms, entry })
            }
            Op::Flush(done) => {
                flushed.push(done);
                None
            }
            Op::Reopen => None,
            op => Some(op),
        })
        .collect()
}

/// Commits `batch` in one transaction. Every durable writer of the batch is
/// put in `durable` (even when the commit fails early) to be answered. A
/// batch with durable writes commits by the earliest of their deadlines or
/// not at all: the lock wait is bounded by it, and a transaction still
/// open past it is rolled back, so a writer told "not committed" never
/// finds its entry committed later.
fn commit(conn: &mut Connection, batch: Vec<Op>, flushed: &mut Vec<mpsc::Sender<()>>, durable: &mut Vec<Durable>) -> Result<(), String> {
    // Take the reply handles out first: an early error must answer them all.
    let batch = take_replies(batch, flushed, durable);
    let deadline = durable.iter().map(|(d, _)| *d).min();
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(real_now());
        if left.is_zero() {
            return Err("its deadline passed before the store could write it".to_string());
        }
        conn.busy_timeout(left.min(BUSY_TIMEOUT)).map_err(|e| e.to_string())?;
    }
    let result = write_batch(conn, batch, deadline);
    if deadline.is_some() {
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
    }
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err("the store could not commit before the deadline; nothing was written".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `batch` in one transaction; `Ok(false)` when it was rolled back
/// because `deadline` passed before the commit.
fn write_batch(conn: &mut Connection, batch: Vec<Op>, deadline: Option<std::time::Instant>) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    for op in batch {
        match op {
            Op::Transition(t) => {
                tx.prepare_cached(
                    "INSERT INTO transitions (at_ms, upstream, from_state, to_state, rule, reason, shadow) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![t.at_ms, t.upstream, t.from, t.to, t.rule, t.reason, i64::from(t.shadow)])?;
            }
            Op::Audit { at_ms, entry } => {
                tx.prepare_cached("INSERT INTO audit (at_ms, entry) VALUES (?1, ?2)")?.execute(params![at_ms, entry])?;
            }
            Op::Overrides(all) => {
                tx.execute("DELETE FROM overrides", [])?;
                for (name, entry) in all {
                    tx.prepare_cached("INSERT INTO overrides (upstream, entry) VALUES (?1, ?2)")?.execute(params![name, entry])?;
                }
            }
            Op::Circuit(name, c) => {
                tx.prepare_cached(
                    "INSERT INTO circuits (upstream, saved_ms, mode, mode_until_ms, history) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (upstream) DO UPDATE SET saved_ms = ?2, mode = ?3, mode_until_ms = ?4, history = ?5",
                )?
                .execute(params![name, c.saved_ms, c.mode, c.mode_until_ms, c.history])?;
            }
            Op::Phase(name, p) => {
                tx.prepare_cached(
                    "INSERT INTO circuit_phases (upstream, saved_ms, phase, open_until_ms, recovery_attempts, total_incidents, counters)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (upstream) DO UPDATE SET saved_ms = ?2, phase = ?3, open_until_ms = ?4,
                         recovery_attempts = ?5, total_incidents = ?6, counters = ?7",
                )?
                .execute(params![
                    name,
                    p.saved_ms,
                    p.phase,
                    p.open_until_ms,
                    i64::from(p.recovery_attempts),
                    i64::try_from(p.total_incidents).unwrap_or(i64::MAX),
                    p.counters
                ])?;
            }
            // Taken out above.
            Op::Flush(_) | Op::DurableAudit { .. } | Op::Reopen => {}
        }
    }
    if deadline.is_some_and(|d| real_now() >= d) {
        // Dropped: rolled back.
        return Ok(false);
    }
    tx.commit()?;
    Ok(true)
}

fn prune(conn: &Connection) -> rusqlite::Result<()> {
    let cutoff = unix_ms(SystemTime::now()) - i64::try_from(TRANSITION_RETENTION.as_millis()).unwrap_or(i64::MAX);
    conn.execute("DELETE FROM transitions WHERE at_ms < ?1", params![cutoff])?;
    conn.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?1", params![AUDIT_KEEP])?;
    Ok(())
}

/// The stored mode of a circuit that is still in force at `now_ms`.
pub fn live_mode(saved: &SavedCircuit, now_ms: i64) -> Option<(&str, Option<Duration>)> {
    if saved.mode == "auto" {
        return None;
    }
    match saved.mode_until_ms {
        None => Some((saved.mode.as_str(), None)),
        Some(until) if until > now_ms => {
            Some((saved.mode.as_str(), Some(Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(0)))))
        }
        Some(_) => None,
    }
}
