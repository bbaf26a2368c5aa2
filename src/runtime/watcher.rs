//! Watches one file (the config, a TLS certificate or key) and calls back
//! once a new version of it is complete: a half-written file is never
//! passed on, and no file at the path, whatever it is, can block or bloat
//! the process.
//!
//! How a version is judged complete: after the file's events stop for
//! [`SETTLE`] (or [`MAX_WAIT`] after the first one, so a file rewritten
//! without pause is still picked up), and while no writer has it open (a
//! write event of the file not yet followed by its close, waited for up to
//! [`WRITER_GRACE`] of silence), the file is read twice [`STABLE`] apart;
//! only two identical reads are a version. Reads go through
//! [`read_small_file`] on the blocking pool: non-blocking open, type and
//! size checked on the open descriptor, bounded read; only a hash of the
//! last version is kept. An atomic rename (write a temporary file, then
//! `mv` it over the path; what a Kubernetes ConfigMap does) is never seen
//! half-written and is picked up fastest.
//!
//! Must not: read or call back on a runtime worker that serves traffic,
//! keep the bytes of a file, or call back twice for the same version.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::read_small_file;

/// Quiet time after the file's last event before reading it: editors and
/// Kubernetes write in bursts.
pub const SETTLE: Duration = Duration::from_millis(150);
/// Two reads this far apart must be identical for the file to count as
/// complete (a writer pausing at a line boundary shorter than this, with
/// the file closed, is caught by the second read).
pub const STABLE: Duration = Duration::from_millis(300);
/// A file whose events never stop is still read this long after the
/// first event of a burst.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// A writer that has the file open (written, not yet closed) is waited for
/// while it writes; after this long without a write the file is read
/// anyway (a program that keeps the file open forever).
pub const WRITER_GRACE: Duration = Duration::from_secs(5);

/// What the notify thread saw of the watched file since the task started.
struct Signals {
    start: Instant,
    /// A write to the file was seen and not yet its close (inotify's
    /// `IN_MODIFY` without a later `IN_CLOSE_WRITE`).
    writing: AtomicBool,
    /// When the last write event of the file arrived (ms since `start`).
    last_write_ms: AtomicU64,
}

/// What a read of the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The hash of its bytes.
    Content(u64),
    /// Nothing at the path (an editor between delete and create): no news.
    Missing,
    /// Something there that cannot be a version (a FIFO, a device, too
    /// large, unreadable): passed on once, so the reload reports it.
    Refused(String),
}

/// Whether a watched directory's event may have changed a file in it.
/// Opening and reading a file (the watcher's own check of the file is
/// one) does not: reacting to those made the watcher read its file again
/// and again, several times a second, forever.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether an event of the watched file itself says a writer has it open
/// (Some(true)), is done with it (Some(false)), or neither.
fn writer_open(kind: &notify::EventKind) -> Option<bool> {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => Some(true),
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(_)) => Some(false),
        _ => None,
    }
}

/// Watches `path`'s directory (so the `..data` symlink swap of a Kubernetes
/// ConfigMap, an editor's rename-over-save and a plain write are all seen)
/// and calls `on_change`, on the blocking pool, once per new complete
/// version of the file (or once per new reason it cannot be read). The
/// version it compares the first change with is read before this returns,
/// so a change made right after it returns is never mistaken for the
/// version already running. The returned watcher stops when dropped.
pub async fn spawn_watcher(path: PathBuf, on_change: impl Fn() + Send + Sync + 'static) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let signals = Arc::new(Signals { start: Instant::now(), writing: AtomicBool::new(false), last_write_ms: AtomicU64::new(0) });
    // Capacity 1: events only need to say "something happened"; a full
    // channel already holds that news.
    let (tx, rx) = mpsc::channel::<()>(1);
    let seen_by_notify = signals.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if !may_change(&event.kind) {
            return;
        }
        let ours = event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name);
        tracing::trace!(kind = ?event.kind, ours, "watched directory event");
        if ours {
            if let Some(open) = writer_open(&event.kind) {
                seen_by_notify.writing.store(open, Ordering::Release);
                if open {
                    let ms = u64::try_from(seen_by_notify.start.elapsed().as_millis()).unwrap_or(u64::MAX);
                    seen_by_notify.last_write_ms.store(ms, Ordering::Release);
                }
            }
        }
        let _ = tx.try_send(());
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let last = read(&path).await;
    tokio::spawn(follow(path, signals, rx, last, Arc::new(on_change)));
    Ok(watcher)
}

/// The watch task: one burst of events at a time, until the watcher is
/// dropped.
async fn follow(path: PathBuf, signals: Arc<Signals>, mut rx: mpsc::Receiver<()>, mut last: Seen, on_change: Arc<dyn Fn() + Send + Sync>) {
    while rx.recv().await.is_some() {
        let Some(version) = next_version(&path, &signals, &mut rx).await else { return };
        if version == Seen::Missing || version == last {
            continue;
        }
        if let Seen::Refused(why) = &version {
            tracing::warn!(path = %path.display(), reason = %why, "watched file cannot be read");
        }
        last = version;
        let call = on_change.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || call()).await {
            tracing::error!(path = %path.display(), error = %e, "file change handler failed");
        }
    }
}

/// Waits for the burst that started with the event just received to end,
/// then for a version of the file that two reads agree on. None when the
/// watcher was dropped.
async fn next_version(path: &Path, signals: &Signals, rx: &mut mpsc::Receiver<()>) -> Option<Seen> {
    let first = Instant::now();
    loop {
        settle(rx, first).await?;
        // A writer still has the file: wait for its close (or its silence).
        while signals.writing.load(Ordering::Acquire) && since_last_write(signals) < WRITER_GRACE {
            quiet_for(rx, SETTLE).await?;
        }
        let a = read(path).await;
        tokio::time::sleep(STABLE).await;
        if signals.writing.load(Ordering::Acquire) && since_last_write(signals) < WRITER_GRACE {
            continue;
        }
        let b = read(path).await;
        tracing::debug!(path = %path.display(), stable = a == b, "watched file read twice");
        if a == b {
            // Events of the reads' interval said nothing new.
            while rx.try_recv().is_ok() {}
            return Some(a);
        }
    }
}

/// Until no event for [`SETTLE`], or [`MAX_WAIT`] after `first`.
async fn settle(rx: &mut mpsc::Receiver<()>, first: Instant) -> Option<()> {
    let cap = first.checked_add(MAX_WAIT).unwrap_or(first);
    loop {
        let now = Instant::now();
        if now >= cap {
            return Some(());
        }
        let until = now.checked_add(SETTLE).unwrap_or(now).min(cap);
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return None,
            Err(_) => return Some(()),
        }
    }
}

/// Waits `d` (or less, when an event comes). None when the watcher was dropped.
async fn quiet_for(rx: &mut mpsc::Receiver<()>, d: Duration) -> Option<()> {
    match tokio::time::timeout(d, rx.recv()).await {
        Ok(None) => None,
        _ => Some(()),
    }
}

fn since_last_write(signals: &Signals) -> Duration {
    let at = Duration::from_millis(signals.last_write_ms.load(Ordering::Acquire));
    signals.start.elapsed().saturating_sub(at)
}

/// One bounded read of the file, on the blocking pool.
async fn read(path: &Path) -> Seen {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || match read_small_file(&owned) {
        Ok(bytes) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            Seen::Content(h.finish())
        }
        Err(_) if !owned.exists() => Seen::Missing,
        Err(e) => Seen::Refused(e),
    });
    read.await.unwrap_or_else(|e| Seen::Refused(format!("read failed: {e}")))
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};
    use notify::EventKind;

    use super::{may_change, writer_open};

    #[test]
    fn reading_the_file_is_not_a_change_but_writing_renaming_and_replacing_are() {
        assert!(!may_change(&EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!may_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!may_change(&EventKind::Access(AccessKind::Read)));
        assert!(may_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(may_change(&EventKind::Modify(ModifyKind::Data(DataChange::Content))));
        assert!(may_change(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(may_change(&EventKind::Create(CreateKind::File)));
        assert!(may_change(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn a_write_opens_the_writer_and_its_close_or_a_replacement_ends_it() {
        assert_eq!(writer_open(&EventKind::Modify(ModifyKind::Data(DataChange::Any))), Some(true));
        assert_eq!(writer_open(&EventKind::Access(AccessKind::Close(AccessMode::Write))), Some(false));
        assert_eq!(writer_open(&EventKind::Modify(ModifyKind::Name(RenameMode::To))), Some(false));
        assert_eq!(writer_open(&EventKind::Create(CreateKind::File)), Some(false));
        assert_eq!(writer_open(&EventKind::Remove(RemoveKind::File)), Some(false));
        assert_eq!(writer_open(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))), None);
    }
}
