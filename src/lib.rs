//! fusebox: a sidecar reverse proxy that gives every upstream its own
//! circuit breaker.
//!
//! Modules, in the order a request meets them: `config` (YAML -> checked
//! `Config`, live reload), `proxy` (the data path), `breaker` (the pure
//! state machine), `admin` (health, metrics, admin API on its own
//! listener), `telemetry` (metrics and logging), `app` (wiring, listeners,
//! shutdown), `store` (the SQLite file that keeps history, audit and
//! overrides across restarts), `demo` (built-in upstreams and traffic for
//! `fusebox demo`), `watch` (the terminal client of the state WebSocket,
//! `fusebox watch`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod demo;
pub mod h1;
pub mod history;
pub mod proxy;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;

pub use app::App;
pub use config::Config;
