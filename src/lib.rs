//! fusebox: a sidecar reverse proxy that gives every upstream its own
//! circuit breaker.
//!
//! Modules in layers, lowest first; a module uses only modules of lower
//! layers (`tests/layers.rs` checks every `crate::` path against this
//! order):
//!
//! 1. `build` (version, commit and target of this binary), `clock` (the
//!    one time source, injectable in tests), `http` (the
//!    response body type and fusebox's JSON answers), `h1` (the upstream
//!    HTTP/1.1 client codec), `text` (outside text escaped for one log or
//!    error line);
//! 2. `breaker` (the pure state machine);
//! 3. `history` (a circuit's operation buckets and health periods);
//! 4. `config` (YAML -> checked `Config`: parse and validate, no runtime
//!    objects);
//! 5. `tls` (certificates and rustls configs);
//! 6. `telemetry` (metrics, logging, and traces with their OTLP export,
//!    which dials collectors with `tls`'s client configs), `store` (the
//!    SQLite file that keeps history, audit, overrides and circuit phases
//!    across restarts);
//! 7. `runtime` (what a config becomes while fusebox runs: circuits,
//!    endpoints, pools, generations, overrides, the live config store and
//!    reloads);
//! 8. `fleet` (what the sidecars of a fleet share through Redis:
//!    members, fleet-wide actions, verdicts and trial leases);
//! 9. `proxy` (the data path) and `admin` (health, metrics, admin API and
//!    state WebSocket on their own listener), side by side;
//! 10. `app` (wiring, listeners, shutdown);
//! 11. `demo` (built-in upstreams and traffic for `fusebox demo`), `watch`
//!     (the terminal client of the state WebSocket, `fusebox watch`),
//!     `healthcheck` (the one-GET probe of `fusebox healthcheck`); the
//!     binary (`main.rs`) on top.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod breaker;
pub mod build;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod h1;
pub mod healthcheck;
pub mod history;
pub mod http;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod watch;

pub use app::App;
pub use config::Config;
