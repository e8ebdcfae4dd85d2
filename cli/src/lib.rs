//! cb-cli: the binaries' shared code. `cbd` (the daemon) is `settings` + `token` and
//! `credentials` (who may call what) + `api` + `server` around a `cb_dispatcher::Dispatcher`
//! (and `console`, the web page it serves; `reload`, what SIGHUP reads again); `cbctl` is
//! `replay` (the audit) plus views of the log; `ingest` validates request bodies, `view`
//! renders state as JSON, `error` is the API's error answer, `openapi` its description,
//! `redeliver` checks rule 6 before an append, `rewind` shows a file as of a point, `pages`
//! keeps both binaries on small memory pages.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod console;
pub mod credentials;
pub mod error;
pub mod ingest;
pub mod lists;
pub mod openapi;
pub mod pages;
pub mod redeliver;
pub mod reload;
pub mod replay;
pub mod rewind;
pub mod server;
pub mod settings;
pub mod token;
pub mod view;
