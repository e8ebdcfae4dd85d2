//! cb-dispatcher: the side effects. The [`Dispatcher`]'s driver owns the log and the pure
//! core, folds every durable record, performs the effects the core hands out — HTTP(S)
//! deliveries through one pooled keep-alive client, timers as `Ticked` records, disables —
//! and appends every outcome back into the log.
//!
//! Map: `driver` (the tokio shell, the [`Handle`] others use), `driver_state` (its
//! decisions, without I/O: ticks, admission, refusals, shutdown), `deliver` (one attempt: render,
//! request, classify), `target` (which addresses may be reached, and the connector that
//! checks every resolved address), `tls` (what HTTPS deliveries trust and present, and the
//! sentence for a failed handshake), `limits` (attempts in flight, globally and per origin, and the queues where attempts wait
//! for a slot), `mail` (`mailto:` through the SMTP relay),
//! `metrics` (Prometheus: counters, gauges, histograms, per-(project, callback) series within
//! a bound), `exposition` (a scrape's two text forms, and the choice between
//! them), `change_times` (when each change was appended, kept small, for the delivery lag).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod change_times;
pub mod deliver;
pub mod driver;
pub mod driver_state;
pub mod exposition;
pub mod limits;
pub mod log;
pub mod mail;
pub mod metrics;
pub mod sim;
pub mod target;
pub mod tls;

pub use deliver::{webhook_id, Deliverer, DeliveryConfig, TestReport};
pub use driver::{Dispatcher, DispatcherOptions, Error, Handle, Started};
pub use limits::LimitsConfig;
pub use metrics::Metrics;
pub use tls::{OutgoingTls, TlsFileError, TlsFiles};
