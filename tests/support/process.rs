//! `fusebox run` as a child process on a config file in a fresh temp
//! directory, for tests whose subject is the process itself (its file
//! watcher, its descriptor limit, its memory): the bound addresses are read
//! from its JSON "ready" line, its log is kept in a file, and the process
//! is killed and the directory removed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Process {
    pub child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Process {
    /// Starts fusebox on `yaml` (which must listen on port 0 or fixed
    /// ports); `wrapper` runs before the binary (e.g. `prlimit --nofile=...`).
    pub fn start(tag: &str, yaml: &str, wrapper: &[&str]) -> Process {
        let dir = super::temp_dir(tag);
        let config = dir.join("fusebox.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join("fusebox.log");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_fusebox"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_fusebox")),
        };
        let mut child = cmd
            .args(["--log-format", "json", "run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&log_path).ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let fields = if v["fields"].is_object() { &v["fields"] } else { &v };
                    if let (Some(d), Some(a)) = (fields["data"].as_str(), fields["admin"].as_str()) {
                        let _ = tx.send((d.parse().unwrap(), a.parse().unwrap()));
                    }
                }
            }
        });
        let (data, admin) = rx.recv_timeout(Duration::from_secs(20)).expect("fusebox logs its addresses");
        Process { child, data, admin, dir, config, log }
    }

    /// Resident memory in KiB (`VmRSS`), None off Linux.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill {sig}");
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
