//! The data path: the listener (`server`, `conn`), the request handler
//! (`forward`), header rewriting (`headers`), body deadlines and the
//! exchange's end (`body`) and fusebox's own answers (`respond`), over the runtime layer's generations, circuits, endpoints
//! and pools. A request goes through these phases, each a named function
//! of `forward` in this order:
//!
//! 0. **check** (`check`): an HTTP/1.1 request needs exactly one `Host`
//!    (400 otherwise, the client's fault).
//! 1. **route** (`route`): first matching route of the current
//!    `runtime::Generation` (`runtime::route`) by host, path prefix and method: an upstream and, for
//!    a route with `operation`, that operation's circuit; no match is a
//!    404 from fusebox, never a breaker failure.
//! 2. **admit** (`runtime::upstream::Circuit::admit`): the operation's circuit, then
//!    the upstream's (bulkhead, then breaker); a refusal is answered at once
//!    by `respond` (503 + `Retry-After`, or the fallback).
//! 3. **forward** (`attempt`): pick an endpoint not ejected (`runtime::endpoint`),
//!    rewrite the request (`headers`: hop-by-hop headers, `Host`,
//!    `x-forwarded-*`, `x-request-id`), send it on a pooled keep-alive connection (`runtime::pool`)
//!    within the request timeout counted from the end of the upload
//!    (`body`); a failed attempt is retried on another endpoint when
//!    `runtime::retry` allows it. Upgrades are spliced.
//! 4. **classify + record**: every attempt's typed `runtime::fault::Fault` counts
//!    for its endpoint (outlier detection); the client request's one
//!    outcome counts for its circuits once, when the exchange ends: at the
//!    response head for a failure status, else when the body ends (`body`:
//!    complete, a success; cut or stalled, the upstream's failure;
//!    abandoned by the client, nothing).
//! 5. **respond**: the upstream's response streams back under the idle
//!    deadline.
//!
//! The listener side (`server`, `conn`) gives every connection its
//! deadlines. This module owns the listener's request handling; it must not
//! parse config files, build generations or serve admin endpoints, and
//! takes no lock shared across upstreams.

pub mod body;
pub mod conn;
pub mod forward;
pub mod headers;
pub mod respond;
pub mod server;
