//! End-to-end tests: the real `cbd` binary on a temp data dir and port 0, real HTTP receivers
//! on 127.0.0.1:0 (in this process, with scripted answers), a real HTTP client. Each test
//! starts its own daemon and receivers, so they run in parallel.
//!
//! Map (issue 4's list): `access` — scoped tokens per route, their reload, the API over
//! TLS; `delivery` — coalescing, many files over few connections, retries,
//! abandon, redeliver; `restart` — SIGKILL under load, windows kept across a restart,
//! graceful stop; `api` — bad input, auth, reads; `targets` — the address policy;
//! `isolation` — slow and failing receivers, `Retry-After`, `410 Gone`; `mail` —
//! `mailto:` through a local SMTP sink; `outcomes` — honest outcomes, JSON scalars; `diskfull` — a real small tmpfs filling up;
//! `durability` — a damaged index rebuilt at start, retention and its archives; `openapi` —
//! the API's OpenAPI document validated, and a schema fuzzer run against it; `console` —
//! the web console in a real headless Chromium, and the rewind route it reads; `tls` —
//! HTTPS receivers with a private CA, bad certificates and mutual TLS, and unusable TLS
//! files at start; `metrics` — `/metrics` in both text forms, read by Python's
//! prometheus_client; `deploy` — docs/deploy/'s configuration file and systemd unit, a
//! taken port, `cbctl --server`'s token.

mod access;
mod api;
mod cbctl;
mod console;
mod delivery;
mod deploy;
mod diskfull;
mod durability;
mod golden;
mod isolation;
mod lists;
mod mail;
mod metrics;
mod openapi;
mod outcomes;
mod recipes;
mod restart;
mod support;
mod targets;
mod tls;
