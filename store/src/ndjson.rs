//! The NDJSON interchange: the log as text, one record a line, for `cbctl export/import`,
//! `GET /v1/log` and bug reports. Documented in `docs/interchange.md`; the shape is stable.
//!
//! A line is a JSON object with `seq`, `at` (milliseconds since the Unix epoch, exact),
//! `time` (the same instant in RFC 3339, for people; ignored on import) and `kind`, plus the
//! fields of its kind. A change line is the `POST /v1/changes` body with the snapshot under
//! `file` in its field order; an attempt line carries `digest`, the lowercase hex SHA-256
//! of the bytes sent. This module is a shape of its own, not the core's serde: the binary
//! log may change its encoding behind a format version, the interchange may not.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cb_core::{
    AttemptReport, Callback, CallbackName, CallbackRef, DeliveryId, Digest, EventKind,
    FileCallback, FileId, FileKey, MachineKey, Outcome, ProjectId, Record, RecordKind, Seq,
    Snapshot, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::Store;

/// One line of the interchange.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Line {
    /// The record's sequence number.
    pub seq: u64,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub at: u64,
    /// `at` in RFC 3339 (UTC, milliseconds), for people; not read back.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: LineKind,
}

/// The kinds of line, tagged by `kind`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LineKind {
    /// A file changed.
    Change {
        /// The project.
        project: ProjectId,
        /// The file.
        file_id: FileId,
        /// The event.
        event: EventKind,
        /// The snapshot after the change, fields in order.
        file: Snapshot,
        /// Per-file callbacks given with the change (absent: keep the file's set). Read back
        /// under the same list rules as the API's (`FileCallback::check_list`).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "file_callbacks"
        )]
        callbacks: Option<Vec<FileCallback>>,
    },
    /// A project callback was created or replaced.
    CallbackPut {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
        /// Its configuration, every field explicit.
        callback: Callback,
    },
    /// A project callback was removed.
    CallbackRemoved {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
    },
    /// A project callback was paused (rule 8).
    CallbackPaused {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
    },
    /// A paused project callback was resumed (rule 8).
    CallbackResumed {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
    },
    /// An operator's test send to a project callback.
    CallbackTested {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
        /// How it ended.
        outcome: OutcomeLine,
        /// From start to outcome.
        latency_ms: u32,
        /// Lowercase hex SHA-256 of the exact bytes sent.
        digest: Digest,
        /// An operator-facing detail (an error message), possibly empty.
        #[serde(default)]
        detail: String,
    },
    /// A callback was disabled by a `410 Gone`.
    CallbackDisabled {
        /// The project.
        project: ProjectId,
        /// The file whose attempt got the 410.
        file_id: FileId,
        /// `name`, or `file:name` for a per-file callback.
        #[serde(with = "callback_ref")]
        callback: CallbackRef,
        /// The seq of the attempt line that got the 410.
        cause: u64,
    },
    /// Time passed (deadlines fired).
    Tick,
    /// An attempt ended.
    Attempt {
        /// The project.
        project: ProjectId,
        /// The file.
        file_id: FileId,
        /// `name`, or `file:name` for a per-file callback.
        #[serde(with = "callback_ref")]
        callback: CallbackRef,
        /// The seq of the record that opened the delivery.
        delivery: u64,
        /// The attempt's number within the delivery, from 1.
        attempt: u32,
        /// The file version it carried.
        version: u64,
        /// How it ended.
        outcome: OutcomeLine,
        /// From start to outcome.
        latency_ms: u32,
        /// Lowercase hex SHA-256 of the exact bytes sent.
        digest: Digest,
        /// An operator-facing detail (an error message), possibly empty.
        #[serde(default)]
        detail: String,
    },
    /// An operator asked for a redelivery.
    Redeliver {
        /// The project.
        project: ProjectId,
        /// The file.
        file_id: FileId,
        /// One callback (`name` or `file:name`), or absent for all.
        #[serde(
            default,
            with = "opt_callback_ref",
            skip_serializing_if = "Option::is_none"
        )]
        callback: Option<CallbackRef>,
        /// The file's latest version when it was asked, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Not a record: the log's base (retention removed the history before it). `seq` and
    /// `at` are the base's; the next `kept` lines are the kept changes (seqs at or before
    /// the base), then the records after it follow densely.
    Base {
        /// How many kept change lines follow.
        kept: u64,
        /// The core's state at the base, as `cb-core` serializes it.
        state: Box<cb_core::Checkpoint>,
    },
}

/// An attempt's outcome, tagged by `kind`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutcomeLine {
    /// 2xx (or SMTP 250).
    Delivered {
        /// The status.
        status: u16,
    },
    /// Any other HTTP status.
    Status {
        /// The status.
        status: u16,
        /// `Retry-After` of a 429 or 503, in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u32>,
    },
    /// No complete answer in time.
    Timeout,
    /// Could not connect.
    Connect,
    /// TLS failed.
    Tls,
    /// The target is not a public address.
    TargetRefused,
    /// The SMTP relay rejected the message.
    Smtp {
        /// The reply code.
        code: u16,
    },
    /// The receiver closed the connection after the request was sent, without answering.
    Closed,
}

impl From<Outcome> for OutcomeLine {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Delivered { status } => OutcomeLine::Delivered { status },
            Outcome::Status {
                status,
                retry_after_secs,
            } => OutcomeLine::Status {
                status,
                retry_after_secs,
            },
            Outcome::Timeout => OutcomeLine::Timeout,
            Outcome::Connect => OutcomeLine::Connect,
            Outcome::Tls => OutcomeLine::Tls,
            Outcome::TargetRefused => OutcomeLine::TargetRefused,
            Outcome::Smtp { code } => OutcomeLine::Smtp { code },
            Outcome::Closed => OutcomeLine::Closed,
        }
    }
}

impl From<OutcomeLine> for Outcome {
    fn from(o: OutcomeLine) -> Self {
        match o {
            OutcomeLine::Delivered { status } => Outcome::Delivered { status },
            OutcomeLine::Status {
                status,
                retry_after_secs,
            } => Outcome::Status {
                status,
                retry_after_secs,
            },
            OutcomeLine::Timeout => Outcome::Timeout,
            OutcomeLine::Connect => Outcome::Connect,
            OutcomeLine::Tls => Outcome::Tls,
            OutcomeLine::TargetRefused => Outcome::TargetRefused,
            OutcomeLine::Smtp { code } => Outcome::Smtp { code },
            OutcomeLine::Closed => Outcome::Closed,
        }
    }
}

/// The last instant RFC 3339 can write with a four-digit year.
const LAST_RFC3339_MS: u64 = 253_402_300_799_999;

/// `at` as RFC 3339 with milliseconds, when it has a four-digit year.
pub fn rfc3339(at: Timestamp) -> Option<String> {
    (at.0 <= LAST_RFC3339_MS).then(|| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at.0)).to_string()
    })
}

impl Line {
    /// The line for `record`; a change needs its snapshot.
    pub fn from_record(record: &Record, snapshot: Option<&Snapshot>) -> Result<Line> {
        let kind = match &record.kind {
            RecordKind::ChangeAppended {
                file,
                event,
                callbacks,
            } => LineKind::Change {
                project: file.project.clone(),
                file_id: file.file_id.clone(),
                event: *event,
                file: snapshot
                    .cloned()
                    .ok_or(Error::Missing { seq: record.seq })?,
                callbacks: callbacks.as_ref().map(|c| c.to_vec()),
            },
            RecordKind::CallbackPut {
                project,
                name,
                callback,
            } => LineKind::CallbackPut {
                project: project.clone(),
                name: name.clone(),
                callback: Callback::clone(callback),
            },
            RecordKind::CallbackRemoved { project, name } => LineKind::CallbackRemoved {
                project: project.clone(),
                name: name.clone(),
            },
            RecordKind::CallbackPaused { project, name } => LineKind::CallbackPaused {
                project: project.clone(),
                name: name.clone(),
            },
            RecordKind::CallbackResumed { project, name } => LineKind::CallbackResumed {
                project: project.clone(),
                name: name.clone(),
            },
            RecordKind::CallbackTested {
                project,
                name,
                outcome,
                latency_ms,
                digest,
                detail,
            } => LineKind::CallbackTested {
                project: project.clone(),
                name: name.clone(),
                outcome: (*outcome).into(),
                latency_ms: *latency_ms,
                digest: *digest,
                detail: detail.clone(),
            },
            RecordKind::CallbackDisabled { machine, cause } => LineKind::CallbackDisabled {
                project: machine.file.project.clone(),
                file_id: machine.file.file_id.clone(),
                callback: machine.callback.clone(),
                cause: cause.0,
            },
            RecordKind::Ticked => LineKind::Tick,
            RecordKind::AttemptFinished(r) => LineKind::Attempt {
                project: r.machine.file.project.clone(),
                file_id: r.machine.file.file_id.clone(),
                callback: r.machine.callback.clone(),
                delivery: r.delivery.0 .0,
                attempt: r.attempt,
                version: r.version.0,
                outcome: r.outcome.into(),
                latency_ms: r.latency_ms,
                digest: r.digest,
                detail: r.detail.clone(),
            },
            RecordKind::RedeliverRequested {
                file,
                callback,
                version,
            } => LineKind::Redeliver {
                project: file.project.clone(),
                file_id: file.file_id.clone(),
                callback: callback.clone(),
                version: version.map(|v| v.0),
            },
        };
        Ok(Line {
            seq: record.seq.0,
            at: record.at.0,
            time: rfc3339(record.at),
            kind,
        })
    }

    /// The record this line describes, and its snapshot for a change. A base line describes
    /// no record: [`Error::Rejected`].
    pub fn into_record(self) -> Result<(Record, Option<Snapshot>)> {
        let mut snapshot = None;
        let machine = |project, file_id, callback| MachineKey {
            file: FileKey::new(project, file_id),
            callback,
        };
        let kind = match self.kind {
            LineKind::Change {
                project,
                file_id,
                event,
                file,
                callbacks,
            } => {
                snapshot = Some(file);
                RecordKind::ChangeAppended {
                    file: FileKey::new(project, file_id),
                    event,
                    callbacks: callbacks.map(Arc::from),
                }
            }
            LineKind::CallbackPut {
                project,
                name,
                callback,
            } => RecordKind::CallbackPut {
                project,
                name,
                callback: Arc::new(callback),
            },
            LineKind::CallbackRemoved { project, name } => {
                RecordKind::CallbackRemoved { project, name }
            }
            LineKind::CallbackPaused { project, name } => {
                RecordKind::CallbackPaused { project, name }
            }
            LineKind::CallbackResumed { project, name } => {
                RecordKind::CallbackResumed { project, name }
            }
            LineKind::CallbackTested {
                project,
                name,
                outcome,
                latency_ms,
                digest,
                detail,
            } => RecordKind::CallbackTested {
                project,
                name,
                outcome: outcome.into(),
                latency_ms,
                digest,
                detail,
            },
            LineKind::CallbackDisabled {
                project,
                file_id,
                callback,
                cause,
            } => RecordKind::CallbackDisabled {
                machine: machine(project, file_id, callback),
                cause: Seq(cause),
            },
            LineKind::Tick => RecordKind::Ticked,
            LineKind::Attempt {
                project,
                file_id,
                callback,
                delivery,
                attempt,
                version,
                outcome,
                latency_ms,
                digest,
                detail,
            } => RecordKind::AttemptFinished(AttemptReport {
                machine: machine(project, file_id, callback),
                delivery: DeliveryId(Seq(delivery)),
                attempt,
                version: Seq(version),
                outcome: outcome.into(),
                latency_ms,
                digest,
                detail,
            }),
            LineKind::Redeliver {
                project,
                file_id,
                callback,
                version,
            } => RecordKind::RedeliverRequested {
                file: FileKey::new(project, file_id),
                callback,
                version: version.map(Seq),
            },
            LineKind::Base { .. } => {
                return Err(Error::Rejected(format!(
                    "the base line at {} describes no record",
                    self.seq
                )))
            }
        };
        let record = Record {
            seq: Seq(self.seq),
            at: Timestamp(self.at),
            kind,
        };
        Ok((record, snapshot))
    }
}

/// Lines per `append_stamped` call during an import.
const IMPORT_BATCH: usize = 1000;

/// What an export does with the credentials the log holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Credentials {
    /// Written as they are: the export can run a daemon that signs and authenticates as
    /// before, so it is itself a credential.
    #[default]
    Keep,
    /// Replaced ([`Line::redact`]): for a bug report. It replays with the same decisions.
    Redact,
}

impl Line {
    /// Replaces the credentials of a callback the line configures (signing secrets, header
    /// values; see `Callback::redacted`).
    pub fn redact(&mut self) {
        match &mut self.kind {
            LineKind::CallbackPut { callback, .. } => *callback = callback.redacted(),
            LineKind::Base { state, .. } => {
                for (_, slots) in &mut state.projects {
                    for (_, slot) in slots {
                        slot.callback = std::sync::Arc::new(slot.callback.redacted());
                    }
                }
                for (_, entry) in &mut state.files {
                    for slot in &mut entry.callbacks {
                        slot.callback = slot.callback.redacted();
                    }
                }
            }
            LineKind::Change {
                callbacks: Some(list),
                ..
            } => {
                for c in list.iter_mut() {
                    *c = c.redacted();
                }
            }
            _ => {}
        }
    }
}

impl Store {
    /// Writes every durable record from `from` on as NDJSON; returns how many.
    pub fn export(&self, from: Seq, out: &mut impl Write) -> Result<u64> {
        self.export_with(from, out, Credentials::Keep)
    }

    /// [`Store::export`], with the log's credentials kept or redacted. An export from the
    /// log's start after retention begins with the base line and the kept changes.
    pub fn export_with(
        &self,
        from: Seq,
        out: &mut impl Write,
        credentials: Credentials,
    ) -> Result<u64> {
        let mut n = 0;
        let mut buf = Vec::with_capacity(4096);
        let mut write = |mut line: Line, out: &mut dyn Write| -> Result<()> {
            if credentials == Credentials::Redact {
                line.redact();
            }
            buf.clear();
            serde_json::to_writer(&mut buf, &line).expect("a Line always serializes");
            buf.push(b'\n');
            out.write_all(&buf).map_err(Error::io("writing the export"))
        };
        // The base is read once: retention may move it while this runs, and then what is
        // read of the old one fails (its files are gone) or does not continue (below), and the
        // export stops with an error rather than write a log that is not one.
        let mut from = from;
        if let Some(base) = self.base().filter(|b| from <= b.seq) {
            let kept = crate::recover::read_kept(&self.shared.log, &base)?;
            let state = base.checkpoint(self.shared.log.storage())?;
            write(
                Line {
                    seq: base.seq.0,
                    at: base.at.0,
                    time: rfc3339(base.at),
                    kind: LineKind::Base {
                        kept: kept.len() as u64,
                        state: Box::new(state),
                    },
                },
                out,
            )?;
            for (record, _) in kept {
                let snapshot = self
                    .snapshot(record.seq)?
                    .ok_or(Error::Missing { seq: record.seq })?;
                write(Line::from_record(&record, Some(&snapshot))?, out)?;
                n += 1;
            }
            from = Seq(base.seq.0 + 1);
        }
        if self.first_seq() > from {
            // Removed by retention (before this export began, past the base it read).
            return Err(Error::Missing { seq: from });
        }
        let mut expect = from;
        for record in self.records(from) {
            let record = record?;
            if record.seq != expect {
                return Err(Error::Missing { seq: expect });
            }
            expect = Seq(expect.0 + 1);
            let snapshot = match record.kind {
                RecordKind::ChangeAppended { .. } => Some(
                    self.snapshot(record.seq)?
                        .ok_or(Error::Missing { seq: record.seq })?,
                ),
                _ => None,
            };
            write(Line::from_record(&record, snapshot.as_ref())?, out)?;
            n += 1;
        }
        out.flush().map_err(Error::io("writing the export"))?;
        Ok(n)
    }

    /// Reads NDJSON lines and appends them with their own `seq` and `at`: they must
    /// continue this log (the first numbered [`next_seq`](Self::next_seq)). Blank lines are
    /// skipped. A bad line stops the import with its line number; the lines before it that
    /// were appended stay (they are a valid prefix). Ends with [`Store::sync`]. Returns how
    /// many records were appended; `progress` is called with that count as it grows.
    ///
    /// An export taken after retention starts with a base line and the kept changes: into
    /// an empty log they become its base ([`Store::import_base`]); into a log that already
    /// holds the history up to the base (the archives of what retention removed, imported
    /// first) they are skipped, and the records after the base continue it.
    pub fn import(&self, input: impl BufRead, progress: impl FnMut(u64)) -> Result<u64> {
        let result = self.import_lines(input, progress);
        // What was appended stays, and is made durable even when a later line failed.
        self.sync()?;
        result
    }

    fn import_lines(&self, input: impl BufRead, mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        let mut first_line = 0;
        let mut n = 0;
        let flush = |batch: &mut Vec<(Record, Option<Snapshot>)>, first_line: usize| {
            if batch.is_empty() {
                return Ok(0);
            }
            let count = batch.len() as u64;
            self.append_stamped(std::mem::take(batch))
                .map_err(|e| match e {
                    Error::Rejected(why) => Error::Rejected(format!(
                        "lines {first_line}–{}: {why}",
                        first_line + count as usize - 1
                    )),
                    other => other,
                })
                .map(|_| count)
        };
        // The log's own rules (dense seqs, `at` never decreasing), checked line by line so
        // a refusal names its line; the append checks them again for the batch.
        let mut expect = self.last_seq().map_or(1, |s| s.0 + 1);
        let mut last_at = self.last_record()?.map_or(0, |r| r.at.0);
        let mut base = BaseImport::None;
        for (i, line) in input.lines().enumerate() {
            let number = i + 1;
            let line = line.map_err(Error::io(format!("reading line {number}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&line)
                .map_err(|e| Error::Rejected(format!("line {number}: {e}")))?;
            if let LineKind::Base { kept, state } = parsed.kind {
                if !matches!(base, BaseImport::None) || n > 0 || !batch.is_empty() {
                    return Err(Error::Rejected(format!(
                        "line {number}: a base line comes first, once"
                    )));
                }
                // Into a log that reaches the base already, the base adds nothing.
                let skip = expect == parsed.seq + 1;
                if !skip && expect != 1 {
                    return Err(Error::Rejected(format!(
                        "line {number}: a base at {} does not continue this log (the next sequence number is {expect})",
                        parsed.seq
                    )));
                }
                base = BaseImport::Reading {
                    seq: Seq(parsed.seq),
                    state,
                    left: kept,
                    kept: Vec::new(),
                    skip,
                };
                self.import_base_when_read(&mut base, &mut expect, &mut last_at)?;
                continue;
            }
            if let BaseImport::Reading {
                seq, left, kept, ..
            } = &mut base
            {
                if parsed.seq > seq.0 || kept.last().is_some_and(|(r, _)| r.seq.0 >= parsed.seq) {
                    return Err(Error::Rejected(format!(
                        "line {number}: kept change {} is not after the one before it and at or before the base {seq}",
                        parsed.seq
                    )));
                }
                match parsed.into_record()? {
                    (record, Some(snapshot)) => kept.push((record, snapshot)),
                    (record, None) => {
                        return Err(Error::Rejected(format!(
                            "line {number}: record {} among the kept changes is not a change",
                            record.seq
                        )))
                    }
                }
                *left -= 1;
                self.import_base_when_read(&mut base, &mut expect, &mut last_at)?;
                continue;
            }
            if parsed.seq != expect {
                return Err(Error::Rejected(format!(
                    "line {number}: seq {} does not continue the log: the next sequence number is {expect}",
                    parsed.seq
                )));
            }
            if parsed.at < last_at {
                return Err(Error::Rejected(format!(
                    "line {number}: at {} ms is before the line before it ({last_at} ms)",
                    parsed.at
                )));
            }
            expect += 1;
            last_at = parsed.at;
            if batch.is_empty() {
                first_line = number;
            }
            batch.push(parsed.into_record()?);
            if batch.len() == IMPORT_BATCH {
                n += flush(&mut batch, first_line)?;
                progress(n);
            }
        }
        if let BaseImport::Reading { seq, left, .. } = &base {
            return Err(Error::Rejected(format!(
                "the base at {seq} announced {left} more kept changes than the input holds"
            )));
        }
        n += flush(&mut batch, first_line)?;
        progress(n);
        Ok(n)
    }

    /// Once a base line's kept changes are all read, makes them this log's base (or skips
    /// them, when the log already reaches the base).
    fn import_base_when_read(
        &self,
        base: &mut BaseImport,
        expect: &mut u64,
        last_at: &mut u64,
    ) -> Result<()> {
        if !matches!(base, BaseImport::Reading { left: 0, .. }) {
            return Ok(());
        }
        let BaseImport::Reading {
            seq,
            state,
            kept,
            skip,
            ..
        } = std::mem::replace(base, BaseImport::Done)
        else {
            return Ok(());
        };
        if !skip {
            self.import_base(seq, &state, kept)?;
            *expect = seq.0 + 1;
            *last_at = (*last_at).max(state.now.0);
        }
        Ok(())
    }
}

/// Where an import stands with a base line.
enum BaseImport {
    /// None read.
    None,
    /// Read; its kept changes are being read.
    Reading {
        seq: Seq,
        state: Box<cb_core::Checkpoint>,
        /// Kept changes still to come, and those read so far.
        left: u64,
        kept: Vec<(Record, Snapshot)>,
        /// The log already reaches the base: the base and its kept changes add nothing.
        skip: bool,
    },
    /// Read and applied (or skipped).
    Done,
}

/// Reads a change line's per-file callbacks, each checked by its own `Deserialize` and the
/// list by [`FileCallback::check_list`]: an imported log must not hold what the API refuses.
fn file_callbacks<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<FileCallback>>, D::Error> {
    let list = Option::<Vec<FileCallback>>::deserialize(d)?;
    if let Some(list) = &list {
        FileCallback::check_list(list).map_err(serde::de::Error::custom)?;
    }
    Ok(list)
}

mod callback_ref {
    use cb_core::CallbackRef;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &CallbackRef, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CallbackRef, D::Error> {
        let s = String::deserialize(d)?;
        CallbackRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_callback_ref {
    use cb_core::CallbackRef;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Option<CallbackRef>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.collect_str(c),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CallbackRef>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => CallbackRef::parse(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
