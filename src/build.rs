//! What this binary is: its version, the git commit it was built from (when
//! the build knew it: see `build.rs`) and the target it was built for. For
//! `fusebox version` and anything else that reports the build.
//!
//! Must not: run git or read files at run time; these are compile-time
//! constants.

/// The crate version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit, when the build had one (a checkout, or
/// `FUSEBOX_GIT_COMMIT` set at build time).
pub const COMMIT: Option<&str> = option_env!("FUSEBOX_GIT_COMMIT");

/// The target triple, e.g. `x86_64-unknown-linux-gnu`.
pub const TARGET: &str = env!("FUSEBOX_TARGET");

/// `fusebox 0.1.0 (commit 1f4c001abcde, x86_64-unknown-linux-gnu)`.
pub fn describe() -> String {
    format!("fusebox {VERSION} (commit {}, {TARGET})", COMMIT.unwrap_or("unknown"))
}
