//! Observability over HTTP, opt-in (`[http] listen`): `/healthz`, `/readyz`
//! and `/metrics`, served by the supervisor's own loop.
//!
//! - [`http`]: the bounded, non-blocking server.
//! - [`metrics`]: the Prometheus text exposition of the status report.

pub mod http;
pub mod metrics;
