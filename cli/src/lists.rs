//! The operator's lists as the API and `cbctl` give them: their query parameters, checked
//! with clear errors, and their pages as JSON. The core answers them from the lists it
//! keeps (`cb_core::lists`); this module only translates.

use std::collections::HashMap;

use cb_core::{
    CallbackRef, Core, DeliveryQuery, ListKey, ProjectId, Record, RecordKind, Seq, StateName,
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
