//! The operator's lists as the API and `cbctl` give them: their query parameters, checked
//! with clear errors, and their pages as JSON. The core answers them from the lists it
//! keeps (`cb_core::lists`); this module only translates.

use std::collections::HashMap;

use cb_core::{
    CallbackRef, Core, DeliveryQuery, ListKey, ProjectId, Record, RecordKind, Seq, StateName,
    Timestamp,
};
use cb_store::Store;
use serde_json::{json, Value};

use crate::api::{clip, query};
use crate::error::ApiError;
use crate::{ingest, view};

/// The most items a list answers at once.
pub const LIMIT_MAX: usize = 1000;
/// How many when `limit` is not given.
pub const LIMIT_DEFAULT: usize = 100;

/// What `GET /v1/deliveries` (and `cbctl deliveries`) asks, checked.
#[derive(Clone, Debug)]
pub struct DeliveryParams {
    state: Option<StateName>,
    project: Option<ProjectId>,
    callback: Option<CallbackRef>,
    origin: Option<String>,
    after: Option<ListKey>,
    limit: usize,
}

fn bad(detail: String) -> ApiError {
    ApiError::bad_request("bad_query", detail)
}

impl DeliveryParams {
    /// Parses `state=&project=&callback=&origin=&limit=&after=`; anything else is refused.
    pub fn from_query(q: Option<&str>) -> Result<DeliveryParams, ApiError> {
        let q = query(
            q,
            &["state", "project", "callback", "origin", "limit", "after"],
        )?;
        let state = q.get("state").map(|v| state(v)).transpose()?;
        let project = q.get("project").map(|p| ingest::project(p)).transpose()?;
        let callback = q
            .get("callback")
            .map(|c| CallbackRef::parse(c).map_err(|e| bad(format!("callback {:?}: {e}", clip(c)))))
            .transpose()?;
        let origin = q.get("origin").map(|o| origin(o)).transpose()?;
        let after = q
            .get("after")
            .map(|a| ListKey::parse(a).map_err(|e| bad(format!("after {:?}: {e}", clip(a)))))
            .transpose()?;
        Ok(DeliveryParams {
            state,
            project,
            callback,
            origin,
            after,
            limit: limit(&q)?,
        })
    }

    /// The page of `core`'s machines these parameters ask for.
    pub fn page(self, core: &Core) -> DeliveryPage {
        let origin = self.origin;
        let matches_origin = |c: &cb_core::Callback| {
            origin
                .as_deref()
                .is_none_or(|o| cb_dispatcher::limits::origin_of(&c.target) == o)
        };
        let page = core.deliveries(&DeliveryQuery {
            state: self.state,
            project: self.project,
            callback: self.callback,
            target: origin
                .is_some()
                .then_some(&matches_origin as &dyn Fn(&cb_core::Callback) -> bool),
            after: self.after,
            limit: self.limit,
        });
        DeliveryPage {
            items: page
                .items
                .iter()
                .map(|(key, m)| (view::delivery(key, m), m.last_outcome.map(|o| o.seq)))
                .collect(),
            next: page.next.map(|k| k.to_string()),
        }
    }
}

/// What `GET /v1/attempts` (and `cbctl attempts`) asks, checked: a page of recorded
/// attempts, newest first.
#[derive(Clone, Debug)]
pub struct AttemptParams {
    query: cb_store::AttemptQuery,
}

impl AttemptParams {
    /// Parses `project=&callback=&file=&outcome=&since=&until=&limit=&after=`; anything
    /// else is refused. A callback or a file is named within its project, so neither comes
    /// without `project=`.
    pub fn from_query(q: Option<&str>) -> Result<AttemptParams, ApiError> {
        let q = query(
            q,
            &[
                "project", "callback", "file", "outcome", "since", "until", "limit", "after",
            ],
        )?;
        let project = q.get("project").map(|p| ingest::project(p)).transpose()?;
        let callback = q
            .get("callback")
            .map(|c| CallbackRef::parse(c).map_err(|e| bad(format!("callback {:?}: {e}", clip(c)))))
            .transpose()?;
        let file = q.get("file").map(|f| ingest::file_id(f)).transpose()?;
        let of = match (project, file) {
            (Some(project), Some(file_id)) => {
                cb_store::AttemptsOf::File(cb_core::FileKey::new(project, file_id), callback)
            }
            (Some(project), None) => cb_store::AttemptsOf::Project(project, callback),
            (None, _) if callback.is_some() || q.contains_key("file") => return Err(bad(
                "callback= and file= name a callback or a file within a project: give project= too"
                    .into(),
            )),
            (None, _) => cb_store::AttemptsOf::All,
        };
        let class = q
            .get("outcome")
            .map(|o| {
                cb_core::OutcomeClass::parse(o).ok_or_else(|| {
                    let names: Vec<&str> = cb_core::OutcomeClass::ALL
                        .iter()
                        .map(|c| c.as_str())
                        .collect();
                    bad(format!(
                        "outcome {:?}: one of {}",
                        clip(o),
                        names.join(", ")
                    ))
                })
            })
            .transpose()?;
        let time = |name: &str| {
            q.get(name)
                .map(|t| {
                    parse_time(t).ok_or_else(|| {
                        bad(format!(
                            "{name} {:?}: give an RFC 3339 time, e.g. 2026-11-23T09:00:00Z",
                            clip(t)
                        ))
                    })
                })
                .transpose()
        };
        let (since, until) = (time("since")?, time("until")?);
        let before = q
            .get("after")
            .map(|a| match a.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Seq(n)),
                _ => Err(bad(format!(
                    "after {:?}: give the `next` of the previous page (a record's seq)",
                    clip(a)
                ))),
            })
            .transpose()?;
        Ok(AttemptParams {
            query: cb_store::AttemptQuery {
                of,
                class,
                since,
                until,
                before,
                limit: limit(&q)?,
            },
        })
    }

    /// The page, as the API answers it: each attempt as `history` shows it, with its
    /// project and file; `next` is the last one's seq when older ones match too.
    pub fn page(&self, store: &Store) -> Result<Value, cb_store::Error> {
        let page = store.attempts(&self.query)?;
        let next = match (page.more, page.records.last()) {
            (true, Some(last)) => Some(last.seq.0.to_string()),
            _ => None,
        };
        let items: Vec<Value> = page
            .records
            .iter()
            .map(|r| {
                let mut item = view::record(r);
                if let RecordKind::AttemptFinished(a) = &r.kind {
                    item["project"] = a.machine.file.project.as_str().into();
                    item["file_id"] = a.machine.file.file_id.as_str().into();
                }
                item
            })
            .collect();
        Ok(json!({"items": items, "next": next}))
    }
}

/// What `GET /v1/projects` (and `cbctl projects`) asks: a page of projects by id.
#[derive(Clone, Debug)]
pub struct ProjectParams {
    after: Option<ProjectId>,
    limit: usize,
}

impl ProjectParams {
    /// Parses `limit=&after=`; anything else is refused.
    pub fn from_query(q: Option<&str>) -> Result<ProjectParams, ApiError> {
        let q = query(q, &["limit", "after"])?;
        let after = q.get("after").map(|a| ingest::project(a)).transpose()?;
        Ok(ProjectParams {
            after,
            limit: limit(&q)?,
        })
    }

    /// Each project with a callback or a machine, by id: its callbacks (with their target and
    /// origin, and who disabled them) and the machines per state of each and in all. Costs
    /// the projects and callbacks listed: the core keeps the counts.
    pub fn page(self, core: &Core) -> Value {
        let counts = core.group_counts();
        let mut ids: Vec<&ProjectId> = core.projects().chain(counts.keys()).collect();
        ids.sort();
        ids.dedup();
        let from = match &self.after {
            Some(after) => ids.partition_point(|p| *p <= after),
            None => 0,
        };
        let shown = &ids[from..ids.len().min(from + self.limit)];
        let next = (from + self.limit < ids.len()).then(|| shown.last().map(|p| p.as_str()));
        let states = |n: &[u64; 5]| -> Value {
            let m: serde_json::Map<String, Value> = StateName::ALL
                .iter()
                .zip(n)
                .map(|(s, n)| (s.as_str().to_owned(), (*n).into()))
                .collect();
            Value::Object(m)
        };
        let none = std::collections::BTreeMap::new();
        let items: Vec<Value> = shown
            .iter()
            .map(|p| {
                let held = counts.get(*p).unwrap_or(&none);
                let mut total = [0u64; 5];
                for n in held.values() {
                    for (t, n) in total.iter_mut().zip(n) {
                        *t += n;
                    }
                }
                let mut callbacks: Vec<Value> = core
                    .callbacks(p)
                    .map(|(name, slot)| {
                        let r = CallbackRef::Project(name.clone());
                        json!({
                            "callback": name.as_str(),
                            "url": slot.callback.target.to_url(),
                            "origin": cb_dispatcher::limits::origin_of(&slot.callback.target),
                            "disabled_by": slot.disabled_by.map(|s| s.0),
                            "paused_by": core.paused_by(p, name).map(|s| s.0),
                            "machines": states(held.get(&r).unwrap_or(&[0; 5])),
                        })
                    })
                    .collect();
                // Per-file callbacks (LightFlow) have a target per file: counted by name.
                for (r, n) in held
                    .iter()
                    .filter(|(r, _)| matches!(r, CallbackRef::File(_)))
                {
                    callbacks.push(json!({"callback": r.to_string(), "machines": states(n)}));
                }
                json!({"project": p.as_str(), "machines": states(&total), "callbacks": callbacks})
            })
            .collect();
        json!({"items": items, "next": next.flatten()})
    }
}

/// The most machines one bulk redeliver appends for; past it the answer says `more`, and
/// the same request again takes the next ones (those redelivered are no longer failing).
pub const BULK_MAX: usize = 10_000;

/// What `POST /v1/redeliver` asks: `{"project", "callback"?, "state"?, "since"?, "until"?}`.
#[derive(Clone, Debug)]
pub struct BulkRedeliver {
    project: ProjectId,
    callback: Option<CallbackRef>,
    /// Retrying, abandoned, or (absent) both: the failing deliveries.
    states: Vec<StateName>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

impl BulkRedeliver {
    /// Parses the JSON body; unknown fields and bad values are refused with a sentence.
    pub fn from_json(body: &[u8]) -> Result<BulkRedeliver, ApiError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            project: String,
            callback: Option<String>,
            state: Option<String>,
            since: Option<String>,
            until: Option<String>,
        }
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            bad_body(format!(
                "{e}; send {{\"project\", \"callback\"?, \"state\"?: \"abandoned\"|\"retrying\", \"since\"?, \"until\"?}}"
            ))
        })?;
        let states = match b.state.as_deref() {
            None => vec![StateName::Retrying, StateName::Abandoned],
            Some("retrying") => vec![StateName::Retrying],
            Some("abandoned") => vec![StateName::Abandoned],
            Some(other) => {
                return Err(bad_body(format!(
                    "state {:?}: a bulk redeliver takes \"retrying\" or \"abandoned\" (or neither, for both)",
                    clip(other)
                )))
            }
        };
        let time = |what: &str, v: Option<String>| {
            v.map(|v| {
                parse_time(&v).ok_or_else(|| {
                    bad_body(format!(
                        "{what} {:?}: give an RFC 3339 time, e.g. 2026-12-07T09:00:00Z",
                        clip(&v)
                    ))
                })
            })
            .transpose()
        };
        Ok(BulkRedeliver {
            project: ingest::project(&b.project)?,
            callback: b
                .callback
                .map(|c| {
                    CallbackRef::parse(&c)
                        .map_err(|e| bad_body(format!("callback {:?}: {e}", clip(&c))))
                })
                .transpose()?,
            states,
            since: time("since", b.since)?,
            until: time("until", b.until)?,
        })
    }

    /// The machines to redeliver, in list order, at most [`BULK_MAX`]: failing ones (in the
    /// states asked) of the project (and callback) whose last outcome is within
    /// `since..=until`, that a redeliver would start now (`Core::redeliver_check`). With
    /// whether more were left for another request.
    pub fn select(&self, core: &Core) -> (Vec<cb_core::MachineKey>, bool) {
        let mut out = Vec::new();
        for state in &self.states {
            let mut after = None;
            loop {
                let page = core.deliveries(&DeliveryQuery {
                    state: Some(*state),
                    project: Some(self.project.clone()),
                    callback: self.callback.clone(),
                    target: None,
                    after: after.take(),
                    limit: LIMIT_MAX,
                });
                for (key, m) in &page.items {
                    let at = m.last_outcome.map(|o| o.at);
                    let within = at.is_some_and(|at| {
                        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at <= u)
                    });
                    let key = key.machine_key();
                    let version = core.file(&key.file).map(|e| e.version);
                    if within
                        && core
                            .redeliver_check(&key.file, Some(&key.callback), version)
                            .is_ok()
                    {
                        if out.len() == BULK_MAX {
                            return (out, true);
                        }
                        out.push(key);
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        (out, false)
    }
}

/// The records of a bulk redeliver: one `RedeliverRequested` per machine, for its callback.
pub fn redeliver_records(machines: Vec<cb_core::MachineKey>) -> Vec<cb_store::Input> {
    machines
        .into_iter()
        .map(|m| {
            cb_store::Input::Record(RecordKind::RedeliverRequested {
                file: m.file,
                callback: Some(m.callback),
                version: None,
            })
        })
        .collect()
}

/// The answer of a bulk redeliver: how many were appended, their seqs (one append: dense,
/// `first_seq..=last_seq`), and whether the same request again has more to take.
pub fn bulk_answer(count: usize, first: Option<Seq>, more: bool) -> Value {
    json!({
        "count": count,
        "first_seq": first.map(|s| s.0),
        "last_seq": first.map(|s| s.0 + count as u64 - 1),
        "more": more,
    })
}

fn bad_body(detail: String) -> ApiError {
    ApiError::bad_request("bad_body", detail)
}

/// An RFC 3339 time with any offset, or UTC without one (`2026-11-23 09:00:00`, as cbctl
/// prints), as milliseconds since the epoch; `None` if it is neither.
///
/// A time before 1970 is the epoch: it is before every record all the same, so a `since`
/// takes every one and an `until` or a `--to` none. Refusing it, as this did, told the
/// caller to "give an RFC 3339 time" when it had (the schema fuzzer sent
/// `0745-03-28T17:33:22.1Z`).
pub fn parse_time(s: &str) -> Option<Timestamp> {
    // RFC 3339 allows a space for the `T`; UTC without an offset is the same time with `Z`.
    let t = s.trim().replacen(' ', "T", 1);
    let at = [t.clone(), format!("{t}Z")].iter().find_map(|candidate| {
        time::OffsetDateTime::parse(candidate, &time::format_description::well_known::Rfc3339).ok()
    })?;
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    // Before 1970 is the epoch; past u64 cannot be written in RFC 3339 (years end at 9999).
    Some(Timestamp(u64::try_from(ms.max(0)).unwrap_or(u64::MAX)))
}

/// Whether a pause (or, with `pausing` false, a resume) of a project callback can happen now
/// (rule 8): the API and `cbctl` ask before they append, so an operator hears why not.
pub fn pause_check(
    core: &Core,
    project: &ProjectId,
    name: &cb_core::CallbackName,
    pausing: bool,
) -> Result<(), ApiError> {
    if !core.callbacks(project).any(|(n, _)| n == name) {
        return Err(ApiError::not_found(format!(
            "no callback {name} in {project}"
        )));
    }
    match (pausing, core.paused_by(project, name)) {
        (true, Some(seq)) => Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            "already_paused",
            format!("{project}/{name} is already paused (since seq {seq})"),
        )),
        (false, None) => Err(ApiError::new(
            hyper::StatusCode::CONFLICT,
            "not_paused",
            format!("{project}/{name} is not paused"),
        )),
        _ => Ok(()),
    }
}

/// One page of deliveries, before the last outcomes' details are read from the log.
pub struct DeliveryPage {
    items: Vec<(Value, Option<Seq>)>,
    next: Option<String>,
}

impl DeliveryPage {
    /// The records whose detail each item's last outcome needs.
    pub fn outcome_seqs(&self) -> Vec<Option<Seq>> {
        self.items.iter().map(|(_, s)| *s).collect()
    }

    /// The page as the API answers it: `{"items": [...], "next": CURSOR or null}`, each
    /// last outcome with its `detail` (from `details`, in item order).
    pub fn into_json(self, details: Vec<Option<String>>) -> Value {
        let items: Vec<Value> = self
            .items
            .into_iter()
            .zip(details.into_iter().chain(std::iter::repeat(None)))
            .map(|((mut item, _), detail)| {
                if let (Some(detail), Some(outcome)) = (detail, item.get_mut("last_outcome")) {
                    outcome["detail"] = detail.into();
                }
                item
            })
            .collect();
        json!({"items": items, "next": self.next})
    }
}

/// The detail of each attempt outcome record in `seqs` (`None` where there is none).
pub fn details(store: &Store, seqs: &[Option<Seq>]) -> Vec<Option<String>> {
    seqs.iter()
        .map(|seq| match store.record((*seq)?) {
            Ok(Some(Record {
                kind: RecordKind::AttemptFinished(report),
                ..
            })) => Some(report.detail),
            _ => None,
        })
        .collect()
}

fn state(v: &str) -> Result<StateName, ApiError> {
    StateName::ALL
        .into_iter()
        .find(|s| s.as_str() == v)
        .ok_or_else(|| {
            bad(format!(
                "state {:?}: one of coalescing, pending, sent, retrying, abandoned",
                clip(v)
            ))
        })
}

/// `limit=`: 1 to [`LIMIT_MAX`].
fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    let Some(v) = q.get("limit") else {
        return Ok(LIMIT_DEFAULT);
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=LIMIT_MAX).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "limit {:?}: give a number from 1 to {LIMIT_MAX}",
            clip(v)
        ))),
    }
}

/// `origin=`: `scheme://host[:port]`, compared as the dispatcher groups attempts by origin
/// (lowercase; the port only when the callback's URL gives one).
fn origin(v: &str) -> Result<String, ApiError> {
    let refuse = || {
        bad(format!(
            "origin {:?}: give scheme://host[:port], e.g. https://example.org:8443",
            clip(v)
        ))
    };
    let uri: hyper::Uri = v.parse().map_err(|_| refuse())?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(refuse());
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(refuse());
    }
    Ok(format!("{scheme}://{authority}").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_before_1970_is_the_epoch() {
        assert_eq!(
            parse_time("2026-11-23T09:00:00Z"),
            Some(Timestamp(1_795_424_400_000))
        );
        assert_eq!(
            parse_time("2026-11-23T10:00:00.5+01:00"),
            Some(Timestamp(1_795_424_400_500))
        );
        assert_eq!(
            parse_time("2026-11-23 09:00:00"),
            Some(Timestamp(1_795_424_400_000))
        );
        assert_eq!(parse_time("0745-03-28T17:33:22.1Z"), Some(Timestamp(0)));
        assert_eq!(parse_time("1969-12-31 23:59:59"), Some(Timestamp(0)));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn bad_parameters_get_sentences() {
        let err = |q: &str| {
            DeliveryParams::from_query(Some(q))
                .unwrap_err()
                .body()
                .to_string()
        };
        assert!(
            err("state=stuck").contains("one of coalescing"),
            "{}",
            err("state=stuck")
        );
        assert!(err("limit=0").contains("from 1 to 1000"));
        assert!(err("limit=1001").contains("from 1 to 1000"));
        assert!(err("origin=example.org").contains("scheme://host"));
        assert!(err("origin=https://example.org/cb").contains("scheme://host"));
        assert!(err("after=p~a").contains("cursor"));
        assert!(err("cb=a").contains("unknown query parameter"));
        assert!(err("project=a%20b").contains("project"));
        let ok = DeliveryParams::from_query(Some("origin=HTTPS://Example.org:8443/")).unwrap();
        assert_eq!(ok.origin.as_deref(), Some("https://example.org:8443"));
    }
}
