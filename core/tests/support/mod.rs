//! Test support: a simulated driver that stamps records, folds them and keeps the trace, and
//! a one-line-per-record history language so rule tests read like tables.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::Arc;

use cb_core::{
    AttemptReport, Callback, CallbackName, CallbackRef, Core, DeliveryId, Digest, Disposition,
    Effect, EventKind, FileId, FileKey, MachineKey, Outcome, ProjectId, Record, RecordKind, Rules,
    Seq, Timestamp,
};

pub fn project() -> ProjectId {
    ProjectId::new("p").unwrap()
}

pub fn file(id: &str) -> FileKey {
    FileKey::new(project(), FileId::new(id).unwrap())
}

pub fn name(n: &str) -> CallbackName {
    CallbackName::new(n).unwrap()
}

pub fn machine(f: &str, cb: &str) -> MachineKey {
    MachineKey {
        file: file(f),
        callback: CallbackRef::Project(name(cb)),
    }
}

/// A driver that assigns sequence numbers and keeps every record with the effects it caused.
#[derive(Default)]
pub struct Sim {
    pub core: Core,
    pub log: Vec<Record>,
    pub effects: Vec<Vec<Effect>>,
    pub dispositions: Vec<Disposition>,
    /// Per record, how many of its `StartAttempt` effects were decided before the record
    /// took effect (deadlines it passed, and what the record itself starts); the rest fired
    /// after it, in its own step (rules 2: what the record made due at its own time).
    pub started_before: Vec<usize>,
}

impl Sim {
    pub fn push(&mut self, at_ms: u64, kind: RecordKind) -> &[Effect] {
        let seq = Seq(self.log.len() as u64 + 1);
        let at = Timestamp(at_ms.max(self.log.last().map_or(0, |r| r.at.0)));
        let record = Record { seq, at, kind };
        // The same record folded under rules 1 gives the attempts decided before the record's
        // own deadlines fired: the first ones of the real fold's, in the same order.
        let mut shadow = self.core.clone();
        shadow.set_rules(Rules {
            current_from: Seq(u64::MAX),
        });
        let mut before = Vec::new();
        shadow.apply(&record, &mut before);
        let started = |e: &Vec<Effect>| {
            e.iter()
                .filter(|e| matches!(e, Effect::StartAttempt(_)))
                .count()
        };
        let mut effects = Vec::new();
        let d = self.core.apply(&record, &mut effects);
        self.started_before
            .push(started(&before).min(started(&effects)));
        self.log.push(record);
        self.effects.push(effects);
        self.dispositions.push(d);
        self.effects.last().unwrap()
    }

    /// A report for the attempt in flight of `key`, as the dispatcher would append it.
    pub fn report_for(&self, key: &MachineKey, outcome: Outcome) -> Option<AttemptReport> {
        let f = *self.core.machine(key)?.in_flight()?;
        Some(AttemptReport {
            machine: key.clone(),
            delivery: f.delivery,
            attempt: f.attempt,
            version: f.version,
            outcome,
            latency_ms: 1,
            digest: Digest::default(),
            detail: String::new(),
        })
    }
}

/// Folds a history written one record per line and prints, per record, the effects and every
/// machine's state after it.
///
/// ```text
/// put a window=10 leading events=rated,moderated backoff=1,2 retry_for=30   (at time 0 unless @T)
/// @T change f1 rated        a change of p/f1 (T in seconds)
/// @T tick
/// @T ok f1 a | fail f1 a 500 [retry_after=N] | timeout f1 a | gone f1 a
/// @T stale f1 a d2 1 v2     an outcome for an explicit (delivery, attempt, version)
/// @T redeliver f1 [a]
/// @T disable f1 a [CAUSE]   the CallbackDisabled a dispatcher appends after a 410
///                           (CAUSE: the 410's seq; default the previous record)
/// @T rm a
/// ```
pub fn run(history: &str) -> String {
    trace(history, Sim::default()).1
}

/// [`run`] under delivery rules version 1, as a log written before version 2 is folded.
pub fn run_under_rules_1(history: &str) -> String {
    let mut sim = Sim::default();
    sim.core.set_rules(Rules {
        current_from: Seq(u64::MAX),
    });
    trace(history, sim).1
}

/// Folds a history (same language as [`run`]) and returns the driver.
pub fn sim(history: &str) -> Sim {
    trace(history, Sim::default()).0
}

fn trace(history: &str, mut sim: Sim) -> (Sim, String) {
    let mut out = String::new();
    for line in history.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (at_ms, rest) = match line.strip_prefix('@') {
            Some(r) => {
                let (t, rest) = r.split_once(' ').expect("@T then a record");
                ((t.parse::<f64>().unwrap() * 1000.0) as u64, rest)
            }
            None => (sim.log.last().map_or(0, |r| r.at.0), line),
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let kind = parse_record(&sim, &words);
        sim.push(at_ms, kind);
        let record = sim.log.last().unwrap();
        let effects = sim.effects.last().unwrap();
        let _ = write!(
            out,
            "#{:<2} @{:<6} {:<28}",
            record.seq.0,
            fmt_ms(record.at.0),
            rest
        );
        if let Disposition::Ignored(why) = sim.dispositions.last().unwrap() {
            let _ = write!(out, " ignored:{why:?}");
        }
        for e in effects {
            match e {
                Effect::StartAttempt(a) => {
                    let _ = write!(
                        out,
                        " => start {} {}#{} v{} @{}{}",
                        short(&a.machine),
                        a.delivery,
                        a.attempt,
                        a.version,
                        fmt_ms(a.started_at.0),
                        if a.redeliver { " redeliver" } else { "" }
                    );
                }
                Effect::DisableCallback { machine, cause } => {
                    let _ = write!(out, " => disable {} (cause {cause})", short(machine));
                }
                Effect::WakeAt { .. } => {}
            }
        }
        out.push('\n');
        let mut states: Vec<String> = Vec::new();
        for f in ["f1", "f2", "f3"] {
            if let Some(entry) = sim.core.file(&file(f)) {
                for (cb, m) in &entry.machines {
                    states.push(format!("{f}#{cb}: {}", fmt_state(&m.state)));
                }
            }
        }
        if !states.is_empty() {
            let _ = writeln!(out, "{:13}{}", "", states.join(" | "));
        }
    }
    let out = out
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    (sim, out)
}

fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}", ms / 1000)
    } else {
        format!("{:.3}", ms as f64 / 1000.0)
    }
}

fn fmt_state(s: &cb_core::State) -> String {
    use cb_core::State::*;
    match *s {
        Coalescing {
            delivery, due_at, ..
        } => format!("coalescing {delivery} due={}", fmt_ms(due_at.0)),
        Pending(f) => format!(
            "pending {}#{} v{}{}",
            f.delivery,
            f.attempt,
            f.version,
            if f.redeliver { " redeliver" } else { "" }
        ),
        Sent {
            delivery, version, ..
        } => format!("sent {delivery} v{version}"),
        Retrying {
            delivery,
            failed,
            next_at,
            ..
        } => {
            format!(
                "retrying {delivery} failed={failed} next={}",
                fmt_ms(next_at.0)
            )
        }
        Abandoned {
            delivery, attempts, ..
        } => format!("abandoned {delivery} attempts={attempts}"),
    }
}

fn short(m: &MachineKey) -> String {
    format!("{}#{}", m.file.file_id, m.callback)
}

fn parse_record(sim: &Sim, w: &[&str]) -> RecordKind {
    match w[0] {
        "put" => {
            let mut json = serde_json::json!({"url": "http://example.org/cb", "backoff_secs": [5]});
            for opt in &w[2..] {
                let (k, v) = opt.split_once('=').unwrap_or((opt, "true"));
                let value: serde_json::Value = match k {
                    "leading" => v.parse::<bool>().unwrap().into(),
                    "events" => v.split(',').collect::<Vec<_>>().into(),
                    "backoff" => v
                        .split(',')
                        .map(|s| s.parse::<u64>().unwrap())
                        .collect::<Vec<_>>()
                        .into(),
                    _ => v.parse::<u64>().unwrap().into(),
                };
                let key = match k {
                    "window" => "window_secs",
                    "backoff" => "backoff_secs",
                    "retry_for" => "retry_for_secs",
                    other => other,
                };
                json[key] = value;
            }
            RecordKind::CallbackPut {
                project: project(),
                name: name(w[1]),
                callback: Arc::new(Callback::from_json(&json.to_string()).unwrap()),
            }
        }
        "rm" => RecordKind::CallbackRemoved {
            project: project(),
            name: name(w[1]),
        },
        "pause" => RecordKind::CallbackPaused {
            project: project(),
            name: name(w[1]),
        },
        "resume" => RecordKind::CallbackResumed {
            project: project(),
            name: name(w[1]),
        },
        "change" => RecordKind::ChangeAppended {
            file: file(w[1]),
            event: w[2].parse::<EventKind>().unwrap(),
            callbacks: None,
        },
        "tick" => RecordKind::Ticked,
        "redeliver" => RecordKind::RedeliverRequested {
            file: file(w[1]),
            callback: w.get(2).map(|c| CallbackRef::Project(name(c))),
            version: None,
        },
        "disable" => RecordKind::CallbackDisabled {
            machine: machine(w[1], w[2]),
            cause: Seq(w
                .get(3)
                .map_or(sim.log.len() as u64, |c| c.parse().unwrap())),
        },
        "stale" => RecordKind::AttemptFinished(AttemptReport {
            machine: machine(w[1], w[2]),
            delivery: DeliveryId(Seq(w[3].trim_start_matches('d').parse().unwrap())),
            attempt: w[4].parse().unwrap(),
            version: Seq(w[5].trim_start_matches('v').parse().unwrap()),
            outcome: Outcome::Delivered { status: 200 },
            latency_ms: 1,
            digest: Digest::default(),
            detail: String::new(),
        }),
        verb => {
            let outcome = match verb {
                "ok" => Outcome::Delivered { status: 200 },
                "timeout" => Outcome::Timeout,
                "gone" => Outcome::Status {
                    status: 410,
                    retry_after_secs: None,
                },
                "fail" => Outcome::from_status(
                    w[3].parse().unwrap(),
                    w.get(4)
                        .map(|s| s.trim_start_matches("retry_after=").parse().unwrap()),
                ),
                other => panic!("unknown record {other:?}"),
            };
            let key = machine(w[1], w[2]);
            let report = sim
                .report_for(&key, outcome)
                .unwrap_or_else(|| panic!("{key} has no attempt in flight"));
            RecordKind::AttemptFinished(report)
        }
    }
}
