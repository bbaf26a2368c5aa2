//! Build-time facts for `fusebox version`: the git commit (from
//! `FUSEBOX_GIT_COMMIT`, e.g. a Docker build argument, else `git` when the
//! source is a checkout; absent otherwise) and the target triple. Nothing
//! else: no code generation, no network.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FUSEBOX_GIT_COMMIT");
    let commit = std::env::var("FUSEBOX_GIT_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(|| {
        // Rebuild when HEAD moves (a commit, a checkout), not on every build.
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(p) = git(&["rev-parse", "--git-path", &head_ref]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    if let Some(commit) = commit {
        // Only hex: the value ends up in a metric label and a version line.
        let commit: String = commit.trim().chars().filter(char::is_ascii_hexdigit).take(40).collect();
        println!("cargo:rustc-env=FUSEBOX_GIT_COMMIT={commit}");
    }
    println!("cargo:rustc-env=FUSEBOX_TARGET={}", std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string()));
}
