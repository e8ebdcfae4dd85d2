//! A file as of a point in its log, for `cbctl rewind` and `GET /v1/files/{p}/{id}/rewind`
//! alike: its snapshot, its machines and the request each callback in force would get (or,
//! with an attempt in flight, got), folded from that file's records alone (the store's
//! per-file index), never from the whole log. One function, so that the console and the
//! operator tool cannot tell two stories of the same point.

use std::sync::Arc;

use cb_core::{
    render, CallbackRef, Cause, Effect, FileHistory, FileKey, PassedOver, Record, RecordKind,
    Rendered, Seq, Snapshot, StateName, Timestamp,
};
use cb_store::Store;
use serde_json::{json, Value};

use crate::view;

/// A point of the log: just after a record, or at a time (deadlines up to it have fired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// Just after the record with this seq.
    Seq(Seq),
    /// At this time.
    Time(Timestamp),
}

/// A point that is neither a sequence number nor a time.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is neither a sequence number nor an RFC 3339 time \
     (2026-11-23T09:00:00Z, 2026-11-23T10:00:00+01:00, or UTC without the offset)"
)]
pub struct BadPoint(String);

impl Point {
    /// A sequence number, or a time: RFC 3339 with any offset, or UTC without one
    /// (`2026-11-23 09:00:00`, as cbctl prints times).
    pub fn parse(s: &str) -> Result<Point, BadPoint> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Point::Seq(Seq(n)));
        }
        crate::lists::parse_time(s)
            .map(Point::Time)
            .ok_or_else(|| BadPoint(crate::api::clip(s)))
    }

    /// Whether `r` is at or before this point.
    pub fn includes(self, r: &Record) -> bool {
        match self {
            Point::Seq(s) => r.seq <= s,
            Point::Time(t) => r.at <= t,
        }
    }
}

/// Why a file cannot be shown as of a point.
#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    /// Retention removed the history before the point.
    #[error(
        "that point is before the log's base (seq {base}): kept history begins at seq {}{archived}",
        base.0 + 1
    )]
    BeforeBase {
        /// The log's base.
        base: Seq,
        /// Where the removed history went ([`archived_note`]).
        archived: String,
    },
    /// The log has no record of the file at or before the point.
    #[error("no record of file {0} at or before that point")]
    NoSuchFile(FileKey),
    /// The log could not be read.
    #[error(transparent)]
    Store(#[from] cb_store::Error),
}

/// Where the history before the log's base went, as the end of a sentence.
pub fn archived_note(store: &Store) -> String {
    match store.base().and_then(|b| b.archive) {
        Some(dir) => format!("; it is archived in {}", dir.display()),
        None => "; it was not archived (cbd's --archive-dir was not set)".into(),
    }
}

/// The request one callback gets (or, `in_flight`, got) as of the point.
pub struct Payload {
    /// The callback (`name`, or `file:NAME`).
    pub callback: String,
    /// The attempt in flight and its version, if the request is that attempt's.
    pub in_flight: Option<(u32, u64)>,
    /// The configuration it is rendered with.
    pub config: Arc<cb_core::Callback>,
    /// The request URL (with the query, for the `query` format).
    pub url: String,
    /// The bytes and where they go.
    pub rendered: Rendered,
    /// Set when nothing would send this: the latest change passed the callback over (its
    /// `events` leave the event out) and it has no machine waiting to deliver.
    pub passed_over: Option<PassedOver>,
}

impl Payload {
    /// As `cbctl rewind --json` and the API show it.
    pub fn json(&self) -> Value {
        let headers: Vec<Value> = self
            .config
            .headers
            .iter()
            .map(|h| json!({"name": h.name, "value": h.value}))
            .collect();
        let r = &self.rendered;
        let mut v = json!({
            "callback": self.callback,
            "method": self.config.method.as_str(),
            "url": self.url,
            "headers": headers,
            "digest": r.digest().to_hex(),
            "body": String::from_utf8_lossy(&r.bytes),
        });
        if let Some((attempt, version)) = self.in_flight {
            v["in_flight"] = json!({"attempt": attempt, "version": version});
        }
        v["would_send"] = self.passed_over.is_none().into();
        if let Some(why) = self.passed_over {
            v["filtered"] = serde_json::to_value(why).unwrap_or(Value::Null);
        }
        v
    }
}

/// A file as of a point.
pub struct Rewound {
    /// The file's fold up to the point.
    pub history: FileHistory,
    /// Its version there (the seq of its latest change), if it had one.
    pub version: Option<Seq>,
    /// The snapshot of that version.
    pub snapshot: Option<Snapshot>,
    /// What each callback in force would get.
    pub payloads: Vec<Payload>,
    /// The time the log had reached at the point (deadlines up to it have fired).
    pub until: Option<Timestamp>,
    /// The file's last record at or before the point (or the log's base): seq and time.
    pub last: (Seq, Timestamp),
}

/// The file's state and the payloads, serialized as a struct: a `Value` would sort the
/// snapshot's fields, whose order is part of it.
#[derive(serde::Serialize)]
pub struct RewoundJson<'a> {
    #[serde(flatten)]
    state: view::FileState<'a>,
    payloads: Vec<Value>,
}

impl Rewound {
    /// The file's state as of the point, as `GET /v1/files/…` shows a state.
    pub fn state(&self) -> view::FileState<'_> {
        view::file_state(
            &self.history,
            self.version.map(|v| v.0),
            self.snapshot.as_ref(),
        )
    }

    /// As `cbctl rewind --json` and `GET …/rewind` show it: the state and `payloads`.
    pub fn json(&self) -> RewoundJson<'_> {
        RewoundJson {
            state: self.state(),
            payloads: self.payloads.iter().map(Payload::json).collect(),
        }
    }
}

/// `file` as of `to`: its records up to the point folded on their own (the projection
/// property makes that the live core's view of the file then), the snapshot of its version,
/// and the request each callback in force would get for it. Reads the file's records through
/// the store's per-file index, the record at `to` for its time, and the snapshots shown.
pub fn rewind(store: &Store, file: &FileKey, to: Point) -> Result<Rewound, RewindError> {
    let base = store.base();
    if let Some(base) = &base {
        let before = match to {
            Point::Seq(s) => s <= base.seq,
            Point::Time(t) => t < base.at,
        };
        if before {
            return Err(RewindError::BeforeBase {
                base: base.seq,
                archived: archived_note(store),
            });
        }
    }
    let start = store.file_start(file)?;
    let records: Vec<Record> = store
        .file_records(file)?
        .into_iter()
        .filter(|r| to.includes(r))
        .collect();
    if !FileHistory::knows_file(&records, start.as_ref()) {
        return Err(RewindError::NoSuchFile(file.clone()));
    }
    // The time the log had reached at that point: deadlines up to it have fired. At a seq,
    // that is the record's own time, whatever its kind (the tick that fired a window is not
    // one of the file's records, but the file's machine moved with it).
    let until = match to {
        Point::Time(t) => Some(t),
        Point::Seq(s) => match store.record(s)? {
            Some(r) => Some(r.at),
            None => store.last_record()?.map(|r| r.at),
        },
    };
    // A file known with no record after the base is known from the base alone.
    let last = match (records.last(), &base) {
        (Some(r), _) => (r.seq, r.at),
        (None, Some(base)) => (base.seq, base.at),
        (None, None) => (Seq(0), Timestamp(0)),
    };
    let history = FileHistory::fold_from(file, start, records, until, store.rules());
    let version = history.latest_change();
    let snapshot = match version {
        Some(v) => store.snapshot(v)?,
        None => None,
    };
    let payloads = match &snapshot {
        Some(snap) => payloads(store, &history, file, snap)?,
        None => Vec::new(),
    };
    Ok(Rewound {
        history,
        version,
        snapshot,
        payloads,
        until,
        last,
    })
}

/// The payload each callback in force would get for `snap`; for a machine with an attempt
/// in flight, what that attempt sent: rendered with the configuration and the version it
/// started with, which a later PUT or change does not alter.
fn payloads(
    store: &Store,
    h: &FileHistory,
    file: &FileKey,
    snap: &Snapshot,
) -> Result<Vec<Payload>, cb_store::Error> {
    let mut payloads = Vec::new();
    // Disabled callbacks (a 410) are not in force: they get no payload, unless an attempt
    // was still in flight when they were disabled.
    for (callback, config, disabled_by) in h.core.callbacks_of(file) {
        let flight = in_flight_attempt(h, &callback);
        if disabled_by.is_some() && flight.is_none() {
            continue;
        }
        let (in_flight, rendered, cb) = match flight {
            Some(a) => {
                let Some(sent) = store.snapshot(a.version)? else {
                    continue;
                };
                let flight = (a.attempt, a.version.0);
                (Some(flight), render(&sent, &a.callback), a.callback.clone())
            }
            None => (None, render(snap, config), config.clone()),
        };
        // A machine waiting to deliver sends the latest snapshot whatever passed it over
        // since; without one, a change the callback filtered out starts nothing.
        let waiting = h
            .core
            .file(file)
            .and_then(|e| e.machine(&callback))
            .is_some_and(|m| {
                matches!(
                    m.state.name(),
                    StateName::Coalescing | StateName::Pending | StateName::Retrying
                )
            });
        let passed_over = match h.steps.iter().rev().find(|s| is_change(s)) {
            Some(last) if !waiting && in_flight.is_none() => last
                .passed_over
                .iter()
                .find(|(r, _)| *r == callback)
                .map(|(_, why)| *why),
            _ => None,
        };
        payloads.push(Payload {
            callback: callback.to_string(),
            in_flight,
            passed_over,
            url: cb_core::render::request_url(&cb.target.to_url(), &rendered),
            config: cb,
            rendered,
        });
    }
    Ok(payloads)
}

/// Whether a history step is a change of the file.
fn is_change(step: &cb_core::Step) -> bool {
    matches!(
        &step.cause,
        Cause::Record(r, _) if matches!(r.kind, RecordKind::ChangeAppended { .. })
    )
}

/// The attempt a machine of `h`'s file has in flight at the end of `h`, as it was started.
fn in_flight_attempt<'h>(
    h: &'h FileHistory,
    callback: &CallbackRef,
) -> Option<&'h cb_core::Attempt> {
    h.core.file(&h.file)?.machine(callback)?.in_flight()?;
    h.steps
        .iter()
        .flat_map(|s| &s.effects)
        .filter_map(|e| match e {
            Effect::StartAttempt(a) if &a.machine.callback == callback => Some(a),
            _ => None,
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> u64 {
        match Point::parse(s).unwrap() {
            Point::Time(t) => t.0,
            Point::Seq(_) => panic!("{s} read as a seq"),
        }
    }

    /// `--until`/`--to`/`?to=` take any RFC 3339 offset, lowercase `t`/`z`, and a time
    /// without an offset as UTC (how cbctl prints times).
    #[test]
    fn times_take_any_offset_and_a_bare_time_is_utc() {
        let utc = at("2026-11-30T15:13:47Z");
        assert_eq!(utc, 1_796_051_627_000);
        assert_eq!(at("2026-11-30T16:13:47+01:00"), utc);
        assert_eq!(at("2026-11-30T10:13:47-05:00"), utc);
        assert_eq!(at("2026-11-30t15:13:47z"), utc);
        assert_eq!(at("2026-11-30 15:13:47"), utc);
        assert_eq!(at("2026-11-30T15:13:47.250Z"), utc + 250);
        assert!(matches!(Point::parse("42").unwrap(), Point::Seq(Seq(42))));
        // Before the epoch is the epoch: a point before every record (`lists::parse_time`).
        assert_eq!(at("1969-12-31T23:59:59Z"), 0);
        for bad in ["yesterday", "2026-13-01T00:00:00Z", ""] {
            let err = Point::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
        // Echoed input is clipped: an answer never carries a megabyte of it back.
        let long = "x".repeat(10_000);
        assert!(Point::parse(&long).unwrap_err().to_string().len() < 300);
    }
}
