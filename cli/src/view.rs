//! JSON views for the API (and `cbctl --json`): machines, records, callbacks, a file's
//! state and history. Times are given twice: `…_at` in milliseconds since the epoch (exact,
//! as the log holds them) and `…_time` in RFC 3339 (for people).

use cb_core::{
    Callback, CallbackName, CallbackRef, Cause, Effect, FileHistory, Machine, Record, RecordKind,
    Snapshot, State, Step, Timestamp,
};
use cb_store::ndjson::rfc3339;
use serde_json::{json, Map, Value};

fn time(v: &mut Map<String, Value>, name: &str, at: Timestamp) {
    v.insert(format!("{name}_at"), at.0.into());
    if let Some(t) = rfc3339(at) {
        v.insert(format!("{name}_time"), t.into());
    }
}

/// One machine's state.
pub fn machine(callback: &CallbackRef, m: &Machine) -> Value {
    let mut v = Map::new();
    v.insert("callback".into(), callback.to_string().into());
    v.insert("state".into(), m.state.name().as_str().into());
    v.insert("delivery".into(), m.state.delivery().0 .0.into());
    match m.state {
        State::Coalescing { since, due_at, .. } => {
            time(&mut v, "since", since);
            time(&mut v, "due", due_at);
        }
        State::Pending(f) => {
            v.insert("attempt".into(), f.attempt.into());
            v.insert("version".into(), f.version.0.into());
            v.insert("redeliver".into(), f.redeliver.into());
            time(&mut v, "started", f.started_at);
        }
        State::Sent { version, at, .. } => {
            v.insert("version".into(), version.0.into());
            time(&mut v, "sent", at);
        }
        State::Retrying {
            failed,
            next_at,
            first_failure_at,
            redeliver,
            ..
        } => {
            v.insert("attempts".into(), failed.into());
            v.insert("redeliver".into(), redeliver.into());
            time(&mut v, "next", next_at);
            time(&mut v, "first_failure", first_failure_at);
        }
        State::Abandoned { attempts, at, .. } => {
            v.insert("attempts".into(), attempts.into());
            time(&mut v, "abandoned", at);
        }
    }
    if let Some(d) = m.delivered {
        v.insert("delivered_version".into(), d.0.into());
    }
    if let Some(o) = m.last_outcome {
        let mut lo = Map::new();
        lo.insert("seq".into(), o.seq.0.into());
        lo.insert("at".into(), o.at.0.into());
        if let Some(t) = rfc3339(o.at) {
            lo.insert("time".into(), t.into());
        }
        lo.insert("attempt".into(), o.attempt.into());
        lo.insert("outcome".into(), o.outcome.to_string().into());
        lo.insert("class".into(), o.outcome.class().into());
        v.insert("last_outcome".into(), Value::Object(lo));
    }
    Value::Object(v)
}

/// One item of a delivery list: the machine, with its project and file.
pub fn delivery(key: &cb_core::ListKey, m: &Machine) -> Value {
    let mut v = machine(&key.callback, m);
    v["project"] = key.project.as_str().into();
    v["file_id"] = key.file_id.as_str().into();
    v["file"] = format!("{}/{}", key.project, key.file_id).into();
    v
}

/// A callback's configuration as the API shows it: every field explicit, each signing
/// secret redacted to a fingerprint (it is a credential; the log and `/v1/log` keep it, so
/// that a restarted daemon signs as before). The fingerprint, `whsec_…` and the first 8 hex
/// digits of the SHA-256 of the secret, tells an operator which secret is in force, during
/// a rotation say, without showing it.
pub fn callback_config(cb: &Callback) -> Value {
    let mut v = serde_json::to_value(cb).unwrap_or(Value::Null);
    let shown: Vec<Value> = cb
        .secrets
        .iter()
        .map(|s| {
            let d = cb_core::Digest::of(s.as_str().as_bytes()).to_hex();
            format!("whsec_… (sha256 {})", &d[..8]).into()
        })
        .collect();
    match shown.len() {
        0 => {}
        1 => v["secret"] = shown[0].clone(),
        _ => v["secret"] = shown.into(),
    }
    v
}

/// A project callback with its status.
pub fn callback(name: &CallbackName, cb: &Callback, enabled: bool, put_by: u64) -> Value {
    json!({
        "name": name.as_str(),
        "enabled": enabled,
        "put_by": put_by,
        "callback": callback_config(cb),
    })
}

/// One record, compactly (no snapshot body).
pub fn record(r: &Record) -> Value {
    let mut v = Map::new();
    v.insert("seq".into(), r.seq.0.into());
    v.insert("at".into(), r.at.0.into());
    if let Some(t) = rfc3339(r.at) {
        v.insert("time".into(), t.into());
    }
    let (kind, what) = match &r.kind {
        RecordKind::ChangeAppended {
            event, callbacks, ..
        } => {
            let mut w = json!({ "event": event.as_str() });
            if let Some(list) = callbacks {
                w["callbacks"] = list
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .into();
            }
            ("change", w)
        }
        RecordKind::CallbackPut { name, callback, .. } => (
            "callback_put",
            json!({ "name": name.as_str(), "callback": callback_config(callback) }),
        ),
        RecordKind::CallbackRemoved { name, .. } => {
            ("callback_removed", json!({ "name": name.as_str() }))
        }
        RecordKind::CallbackPaused { name, .. } => {
            ("callback_paused", json!({ "name": name.as_str() }))
        }
        RecordKind::CallbackTested {
            name,
            outcome,
            latency_ms,
            digest,
            detail,
            ..
        } => (
            "callback_tested",
            json!({
                "name": name.as_str(),
                "outcome": outcome.to_string(),
                "class": outcome.class(),
                "latency_ms": latency_ms,
                "digest": digest.to_hex(),
                "detail": detail,
            }),
        ),
        RecordKind::CallbackResumed { name, .. } => {
            ("callback_resumed", json!({ "name": name.as_str() }))
        }
        RecordKind::CallbackDisabled { machine, cause } => (
            "callback_disabled",
            json!({ "callback": machine.callback.to_string(), "cause": cause.0 }),
        ),
        RecordKind::Ticked => ("tick", json!({})),
        RecordKind::AttemptFinished(a) => (
            "attempt",
            json!({
                "callback": a.machine.callback.to_string(),
                "delivery": a.delivery.0.0,
                "attempt": a.attempt,
                "version": a.version.0,
                "outcome": a.outcome.to_string(),
                "class": a.outcome.class(),
                "latency_ms": a.latency_ms,
                "digest": a.digest.to_hex(),
                "detail": a.detail,
            }),
        ),
        RecordKind::RedeliverRequested {
            callback, version, ..
        } => (
            "redeliver",
            json!({
                "callback": callback.as_ref().map(ToString::to_string),
                "version": version.map(|s| s.0),
            }),
        ),
    };
    v.insert("kind".into(), kind.into());
    if let Value::Object(w) = what {
        v.extend(w);
    }
    Value::Object(v)
}

fn step(s: &Step) -> Value {
    let mut v = match &s.cause {
        Cause::Record(r, disposition) => {
            let mut v = record(r);
            if let cb_core::Disposition::Ignored(why) = disposition {
                v["ignored"] = serde_json::to_value(why).unwrap_or(Value::Null);
            }
            v
        }
        Cause::Deadline(t) => {
            let mut m = Map::new();
            m.insert("kind".into(), "deadline".into());
            m.insert("at".into(), t.0.into());
            if let Some(tt) = rfc3339(*t) {
                m.insert("time".into(), tt.into());
            }
            Value::Object(m)
        }
    };
    let started: Vec<Value> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::StartAttempt(a) => Some(json!({
                "callback": a.machine.callback.to_string(),
                "delivery": a.delivery.0.0,
                "attempt": a.attempt,
                "version": a.version.0,
            })),
            _ => None,
        })
        .collect();
    if !started.is_empty() {
        v["attempts_started"] = started.into();
    }
    if !s.passed_over.is_empty() {
        v["filtered"] = s
            .passed_over
            .iter()
            .map(|(callback, why)| json!({"callback": callback.to_string(), "why": why}))
            .collect::<Vec<_>>()
            .into();
    }
    if let Cause::Record(r, _) = &s.cause {
        if let Some(wait) = retry_after_wait(r, &s.machines) {
            v["retry_after"] = wait;
        }
    }
    // Not `version`: an attempt or a redeliver has a version field of its own.
    v["file_version"] = s.version.map(|x| x.0).into();
    v["machines"] = s
        .machines
        .iter()
        .map(|(r, m)| machine(r, m))
        .collect::<Vec<_>>()
        .into();
    v
}

/// For an attempt answered 429 or 503 with `Retry-After` and retried: what the receiver
/// asked and what cb waited (rule 4 pushes a retry later for `Retry-After`, never earlier,
/// and no later than twice the scheduled delay), with a sentence that says which, e.g.
/// `asked 3600 s, retried after 9.6 s (cap: 2 × the scheduled delay)`. The ask is in the
/// record; the wait is the fold's decision, so replay shows the same.
fn retry_after_wait(r: &Record, machines: &[(CallbackRef, Machine)]) -> Option<Value> {
    let RecordKind::AttemptFinished(a) = &r.kind else {
        return None;
    };
    let cb_core::Outcome::Status {
        status: 429 | 503,
        retry_after_secs: Some(asked),
    } = a.outcome
    else {
        return None;
    };
    let (_, m) = machines.iter().find(|(c, _)| *c == a.machine.callback)?;
    let State::Retrying { next_at, .. } = m.state else {
        return None;
    };
    let waited_ms = next_at.0.saturating_sub(r.at.0);
    let asked_ms = u64::from(asked) * 1000;
    let waited = format!("{} s", (waited_ms as f64 / 100.0).round() / 10.0);
    let note = if asked_ms > waited_ms {
        format!("asked {asked} s, retried after {waited} (cap: 2 × the scheduled delay)")
    } else if asked_ms == waited_ms {
        format!("asked {asked} s, retried after {waited}")
    } else {
        format!("asked {asked} s, retried after {waited} (the scheduled delay is longer)")
    };
    Some(json!({
        "asked_secs": asked,
        "waited_ms": waited_ms,
        "capped": asked_ms > waited_ms,
        "note": note,
    }))
}

/// A file's history: every step with the machines after it.
/// After retention, `base` says where the kept history begins: the log's base and the
/// file's version there (`null` without a base).
pub fn history(h: &FileHistory) -> Value {
    history_of(h, &h.steps)
}

fn history_of(h: &FileHistory, steps: &[Step]) -> Value {
    json!({
        "project": h.file.project.as_str(),
        "file_id": h.file.file_id.as_str(),
        "base": h.base.as_ref().map(|b| json!({
            "seq": b.seq().0,
            "version": b.version.map(|v| v.0),
        })),
        "steps": steps.iter().map(step).collect::<Vec<_>>(),
    })
}

/// A page of a file's history (`?from=SEQ&limit=N`): the records from seq `from` on, at most
/// `limit` of them, each with the deadlines that fired after it. Pages are cut at records,
/// so a cursor is a seq and stays valid while the history grows.
#[derive(Clone, Copy, Debug)]
pub struct HistoryPage {
    from: u64,
    limit: usize,
}

impl HistoryPage {
    /// The most records a page holds, and how many when `limit` is not given.
    pub const LIMIT_MAX: usize = 10_000;
    const LIMIT_DEFAULT: usize = 1_000;

    /// Parses `from=&limit=`; anything else is refused.
    pub fn from_query(q: Option<&str>) -> Result<HistoryPage, crate::error::ApiError> {
        let q = crate::api::query(q, &["from", "limit"])?;
        let bad = |what: String| crate::error::ApiError::bad_request("bad_query", what);
        let from = match q.get("from") {
            Some(v) => v.parse::<u64>().map_err(|_| {
                bad(format!(
                    "from {:?}: give a sequence number",
                    crate::api::clip(v)
                ))
            })?,
            None => 0,
        };
        let limit = match q.get("limit") {
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=Self::LIMIT_MAX).contains(&n) => n,
                _ => {
                    return Err(bad(format!(
                        "limit {:?}: give a number from 1 to {}",
                        crate::api::clip(v),
                        Self::LIMIT_MAX
                    )))
                }
            },
            None => Self::LIMIT_DEFAULT,
        };
        Ok(HistoryPage { from, limit })
    }
}

/// [`history`], one page of it, with `next`: the seq the next page starts at, or `null`.
pub fn history_page(h: &FileHistory, page: HistoryPage) -> Value {
    let record_seq = |s: &Step| match &s.cause {
        Cause::Record(r, _) => Some(r.seq.0),
        Cause::Deadline(_) => None,
    };
    // A page starts at its first record; deadlines ride with the record before them. Those
    // before any record (due in the state at the log's base) start the first page.
    let earlier_record = h
        .steps
        .iter()
        .any(|s| record_seq(s).is_some_and(|seq| seq < page.from));
    let start = match earlier_record {
        false => 0,
        true => h
            .steps
            .iter()
            .position(|s| record_seq(s).is_some_and(|seq| seq >= page.from))
            .unwrap_or(h.steps.len()),
    };
    let mut records = 0;
    let mut end = start;
    let mut next = None;
    for s in &h.steps[start..] {
        if let Some(seq) = record_seq(s) {
            if records == page.limit {
                next = Some(seq);
                break;
            }
            records += 1;
        }
        end += 1;
    }
    let mut v = history_of(h, &h.steps[start..end]);
    v["next"] = next.into();
    v
}

/// A file's current state: latest snapshot and each machine.
///
/// A struct rather than a `Value`: serde_json's `Value` map sorts keys, and the snapshot must
/// keep its field order.
#[derive(serde::Serialize)]
pub struct FileState<'a> {
    project: &'a str,
    file_id: &'a str,
    version: Option<u64>,
    file: Option<&'a Snapshot>,
    machines: Vec<Value>,
    /// The callbacks in force for the file that a `410 Gone` disabled: they have no machine.
    disabled_callbacks: Vec<Value>,
}

/// See [`FileState`].
pub fn file_state<'a>(
    h: &'a FileHistory,
    version: Option<u64>,
    snapshot: Option<&'a Snapshot>,
) -> FileState<'a> {
    let machines: Vec<Value> = h
        .latest_machines()
        .iter()
        .map(|(r, m, kept)| {
            let mut v = machine(r, m);
            if !kept {
                // The core forgot it: a `sent` machine whose window elapsed is exactly a
                // fresh one. Shown as it last was.
                v["retained"] = false.into();
            }
            v
        })
        .collect();
    let disabled_callbacks = h
        .core
        .callbacks_of(&h.file)
        .filter_map(|(callback, _, by)| {
            Some(json!({"callback": callback.to_string(), "disabled_by": by?.0}))
        })
        .collect();
    FileState {
        project: h.file.project.as_str(),
        file_id: h.file.file_id.as_str(),
        version,
        file: snapshot,
        machines,
        disabled_callbacks,
    }
}

/// How many retrying and abandoned machines a status lists (the totals count them all): a
/// status stays one screen and one cheap request with a million machines abandoned.
pub const STATUS_LISTED: usize = 100;

/// Totals per state, the first [`STATUS_LISTED`] retrying and abandoned machines, and the
/// disabled callbacks (`GET /v1/status`, `cbctl status`). Counted as of `now`
/// (`Core::census_at`): the wall clock, for a report between records. Costs what it lists,
/// not what the core holds: the core keeps the totals and these lists as machines move.
pub fn status(core: &cb_core::Core, now: Timestamp) -> Value {
    let census = core.census_at(now);
    let states: Map<String, Value> = cb_core::StateName::ALL
        .iter()
        .zip(census.states)
        .map(|(s, n)| (s.as_str().to_owned(), n.into()))
        .collect();
    let listed = |state| -> Vec<Value> {
        core.machines_in(state)
            .take(STATUS_LISTED)
            .map(|(k, m)| {
                let mut v = machine(&k.callback, m);
                v["file"] = k.file.to_string().into();
                v
            })
            .collect()
    };
    let mut disabled = Vec::new();
    for p in core.projects() {
        for (n, s) in core.callbacks(p) {
            if let Some(by) = s.disabled_by {
                disabled
                    .push(json!({"project": p.as_str(), "name": n.as_str(), "disabled_by": by.0}));
            }
        }
    }
    // Per-file callbacks (LightFlow) are disabled file by file; the file names them.
    for (key, by) in core.disabled_file_callbacks() {
        disabled.push(json!({
            "project": key.file.project.as_str(),
            "file": key.file.to_string(),
            "name": key.callback.to_string(),
            "disabled_by": by.0,
        }));
    }
    json!({
        "folded_seq": core.last_seq().map(|s| s.0),
        "files": census.files,
        "machines": states,
        "next_deadline": census.next_deadline.map(|t| t.0),
        "ignored_records": census.ignored,
        "retrying": listed(cb_core::StateName::Retrying),
        "abandoned": listed(cb_core::StateName::Abandoned),
        "listed_max": STATUS_LISTED,
        "disabled_callbacks": disabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cb_core::{
        Callback, CallbackName, Core, FileId, FileKey, ProjectId, Record, RecordKind, Seq,
        Timestamp,
    };

    fn put_and_change() -> (Vec<Record>, FileKey) {
        let file = FileKey::new(ProjectId::new("p").unwrap(), FileId::new("1").unwrap());
        let callback = Callback::from_json(r#"{"url":"https://example.org/cb","window_secs":10}"#);
        let records = vec![
            Record {
                seq: Seq(1),
                at: Timestamp(0),
                kind: RecordKind::CallbackPut {
                    project: file.project.clone(),
                    name: CallbackName::new("a").unwrap(),
                    callback: std::sync::Arc::new(callback.unwrap()),
                },
            },
            Record {
                seq: Seq(2),
                at: Timestamp(1_000),
                kind: RecordKind::ChangeAppended {
                    file: file.clone(),
                    event: cb_core::EventKind::Rated,
                    callbacks: None,
                },
            },
        ];
        (records, file)
    }

    /// A history that starts with deadlines (due in the state at the log's base) keeps them
    /// on its first page; later pages start at their records.
    #[test]
    fn deadlines_before_any_record_open_the_first_page() {
        let (records, file) = put_and_change();
        let mut core = Core::new();
        for r in &records {
            core.apply(r, &mut Vec::new());
        }
        let base = cb_core::FileStart {
            state: core.checkpoint(),
            version: Some(Seq(2)),
        };
        let h = FileHistory::fold_from(
            &file,
            Some(base),
            Vec::new(),
            Some(Timestamp(20_000)),
            Default::default(),
        );
        assert!(
            !h.steps.is_empty(),
            "the window's deadline fires after the base"
        );
        let page = history_page(&h, HistoryPage { from: 0, limit: 10 });
        assert_eq!(
            page["steps"].as_array().unwrap().len(),
            h.steps.len(),
            "{page}"
        );
        assert_eq!(page["next"], Value::Null);

        let h = FileHistory::fold(&file, records, Some(Timestamp(20_000)));
        let first = history_page(&h, HistoryPage { from: 0, limit: 1 });
        assert_eq!(first["next"], 2, "{first}");
        let second = history_page(&h, HistoryPage { from: 2, limit: 1 });
        assert_eq!(second["steps"][0]["seq"], 2, "{second}");
        let all =
            first["steps"].as_array().unwrap().len() + second["steps"].as_array().unwrap().len();
        assert_eq!(all, h.steps.len());
    }
}
