//! The runtime layer: what a checked [`Config`](crate::config::Config)
//! becomes while fusebox runs. Circuits that survive reloads by name
//! (`upstream`), endpoints with outlier ejection (`endpoint`), their
//! connection pools (`pool`), retry budgets (`retry`), active health checks
//! (`probe`), the typed blame every failure gets (`fault`), the routing
//! table (`route`), generations and runtime overrides (`generation`), and
//! the live config store with its reloads (`reload`) and the watcher that
//! turns complete new versions of a file into reloads (`watcher`).
//!
//! Both request handlers sit on top of it side by side: `proxy` (the data
//! path) and `admin` (the control plane). It must not serve HTTP itself,
//! parse YAML (that is `config`), or know about either handler.

pub mod endpoint;
pub mod fault;
pub mod generation;
pub mod live;
pub mod pool;
pub mod probe;
pub mod reload;
pub mod retry;
pub mod route;
pub mod upstream;
pub mod watcher;

pub use generation::{Generation, RuntimeOverride, Shared};
pub use live::Live;
