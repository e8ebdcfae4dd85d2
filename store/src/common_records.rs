//! Decoding the records nearly every log is made of — changes without per-file callbacks,
//! attempt outcomes and ticks — straight from their bytes.
//!
//! Records are bincode 2 (standard configuration) through serde (`codec.rs`). serde's
//! visitors cost more than the bytes: reading the 1.8 M records of the benchmark's log
//! spent most of its time in them (docs/performance.md). This module reads those three
//! kinds by hand and gives up — `None` — on anything else, including any byte it would
//! read differently from serde; the caller then decodes through serde, which also words
//! the errors. So the encoding has one definition (the serde derives) and this is only a
//! faster reader of part of it, held to it by the property tests below: for any bytes,
//! it returns either `None` or exactly what serde decodes.

use cb_core::{
    AttemptReport, CallbackName, CallbackRef, DeliveryId, Digest, EventKind, FileId, FileKey,
    MachineKey, Outcome, ProjectId, Record, RecordKind, Seq, Timestamp,
};

// bincode 2's variable-length integers: up to 250 in the byte itself, else a marker byte
// and the value little-endian in 2, 4 or 8 bytes.
const SINGLE_BYTE_MAX: u8 = 250;
const U16_MARKER: u8 = 251;
const U32_MARKER: u8 = 252;
const U64_MARKER: u8 = 253;

// Variant indices, in declaration order (serde's derive numbers them so).
const CHANGE_APPENDED: u32 = 0;
const TICKED: u32 = 4;
const ATTEMPT_FINISHED: u32 = 5;

/// The project and callback name of the record read last, kept by a reader of many records:
/// nearly every record of a log names the same few, and checking and copying the same
/// bytes into a new id for each record was a tenth of decoding. A name whose bytes equal a
/// kept one is that id (it was checked when it was kept).
#[derive(Default)]
pub(crate) struct RecentIds {
    project: Option<ProjectId>,
    callback: Option<CallbackName>,
}

/// The record `payload` encodes, if it is one of the common kinds and reads cleanly to its
/// last byte; `None` otherwise (decode it through serde then).
pub(crate) fn decode(payload: &[u8], ids: &mut RecentIds) -> Option<Record> {
    let mut r = Cursor(payload);
    let seq = Seq(r.u64()?);
    let at = Timestamp(r.u64()?);
    let kind = match r.u32()? {
        CHANGE_APPENDED => {
            let file = r.file(ids)?;
            let event: EventKind = r.str()?.parse().ok()?;
            // `Some` per-file callbacks are rare and nested: left to serde.
            if r.byte()? != 0 {
                return None;
            }
            RecordKind::ChangeAppended {
                file,
                event,
                callbacks: None,
            }
        }
        TICKED => RecordKind::Ticked,
        ATTEMPT_FINISHED => RecordKind::AttemptFinished(AttemptReport {
            machine: MachineKey {
                file: r.file(ids)?,
                callback: match r.u32()? {
                    0 => CallbackRef::Project(r.callback_name(ids)?),
                    1 => CallbackRef::File(r.callback_name(ids)?),
                    _ => return None,
                },
            },
            delivery: DeliveryId(Seq(r.u64()?)),
            attempt: r.u32()?,
            version: Seq(r.u64()?),
            outcome: r.outcome()?,
            latency_ms: r.u32()?,
            digest: Digest(*r.take(32)?.first_chunk::<32>()?),
            detail: r.str()?.to_owned(),
        }),
        _ => return None,
    };
    r.0.is_empty().then_some(Record { seq, at, kind })
}

/// The bytes not read yet.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A variable-length integer whose marker is at most `widest`, as bincode reads one for
    /// a type of that width (it refuses a wider marker).
    fn varint(&mut self, widest: u8) -> Option<u64> {
        match self.byte()? {
            b @ 0..=SINGLE_BYTE_MAX => Some(u64::from(b)),
            m if m > widest => None,
            U16_MARKER => Some(u64::from(u16::from_le_bytes(*self.take(2)?.first_chunk()?))),
            U32_MARKER => Some(u64::from(u32::from_le_bytes(*self.take(4)?.first_chunk()?))),
            U64_MARKER => Some(u64::from_le_bytes(*self.take(8)?.first_chunk()?)),
            _ => None,
        }
    }

    fn u16(&mut self) -> Option<u16> {
        u16::try_from(self.varint(U16_MARKER)?).ok()
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.varint(U32_MARKER)?).ok()
    }

    fn u64(&mut self) -> Option<u64> {
        self.varint(U64_MARKER)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn file(&mut self, ids: &mut RecentIds) -> Option<FileKey> {
        let project = self.bytes()?;
        let project = match &ids.project {
            Some(kept) if kept.as_str().as_bytes() == project => kept.clone(),
            _ => {
                let new = ProjectId::new(std::str::from_utf8(project).ok()?).ok()?;
                ids.project.insert(new).clone()
            }
        };
        let file_id = FileId::new(self.str()?).ok()?;
        Some(FileKey::new(project, file_id))
    }

    fn callback_name(&mut self, ids: &mut RecentIds) -> Option<CallbackName> {
        let name = self.bytes()?;
        match &ids.callback {
            Some(kept) if kept.as_str().as_bytes() == name => Some(kept.clone()),
            _ => {
                let new = CallbackName::new(std::str::from_utf8(name).ok()?).ok()?;
                Some(ids.callback.insert(new).clone())
            }
        }
    }

    fn outcome(&mut self) -> Option<Outcome> {
        Some(match self.u32()? {
            0 => Outcome::Delivered {
                status: self.u16()?,
            },
            1 => Outcome::Status {
                status: self.u16()?,
                retry_after_secs: match self.byte()? {
                    0 => None,
                    1 => Some(self.u32()?),
                    _ => return None,
                },
            },
            2 => Outcome::Timeout,
            3 => Outcome::Connect,
            4 => Outcome::Tls,
            5 => Outcome::TargetRefused,
            6 => Outcome::Smtp { code: self.u16()? },
            7 => Outcome::Closed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use cb_core::{Callback, FileCallback};

    fn decode_alone(payload: &[u8]) -> Option<Record> {
        decode(payload, &mut RecentIds::default())
    }

    /// What the fallback, serde, reads (`codec::decode_payload`).
    fn serde_decode(payload: &[u8]) -> Option<Record> {
        crate::codec::decode_payload(payload).ok()
    }

    fn encode(record: &Record) -> Vec<u8> {
        bincode::serde::encode_to_vec(record, crate::codec::config()).unwrap()
    }

    /// Integers at every width boundary of the encoding.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..300,
            Just(u64::from(u16::MAX)),
            Just(u64::from(u16::MAX) + 1),
            Just(u64::from(u32::MAX)),
            Just(u64::from(u32::MAX) + 1),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    fn file() -> impl Strategy<Value = FileKey> {
        ("[a-z]{1,3}", "[0-9A-Za-z_.-]{1,30}")
            .prop_map(|(p, f)| FileKey::new(ProjectId::new(&p).unwrap(), FileId::new(&f).unwrap()))
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            any::<u16>().prop_map(|status| Outcome::Delivered { status }),
            (any::<u16>(), prop::option::of(any::<u32>())).prop_map(|(status, r)| {
                Outcome::Status {
                    status,
                    retry_after_secs: r,
                }
            }),
            Just(Outcome::Timeout),
            Just(Outcome::Connect),
            Just(Outcome::Tls),
            Just(Outcome::TargetRefused),
            any::<u16>().prop_map(|code| Outcome::Smtp { code }),
            Just(Outcome::Closed),
        ]
    }

    fn kind() -> impl Strategy<Value = RecordKind> {
        let per_file: Arc<[FileCallback]> =
            FileCallback::validate_list(vec![serde_json::from_str(
                r#"{"url":"https://example.org/lf"}"#,
            )
            .unwrap()])
            .unwrap()
            .into();
        prop_oneof![
            (file(), 0..EventKind::ALL.len(), any::<bool>()).prop_map(move |(file, e, cbs)| {
                RecordKind::ChangeAppended {
                    file,
                    event: EventKind::ALL[e],
                    callbacks: cbs.then(|| per_file.clone()),
                }
            }),
            Just(RecordKind::Ticked),
            (
                file(),
                any::<bool>(),
                "[a-z0-9]{1,8}",
                number(),
                any::<u32>(),
                number(),
                outcome(),
                any::<u32>(),
                any::<[u8; 32]>(),
                ".{0,12}",
            )
                .prop_map(
                    |(
                        file,
                        per_file,
                        name,
                        delivery,
                        attempt,
                        version,
                        outcome,
                        latency_ms,
                        d,
                        detail,
                    )| {
                        let name = CallbackName::new(&name).unwrap();
                        RecordKind::AttemptFinished(AttemptReport {
                            machine: MachineKey {
                                file,
                                callback: if per_file {
                                    CallbackRef::File(name)
                                } else {
                                    CallbackRef::Project(name)
                                },
                            },
                            delivery: DeliveryId(Seq(delivery)),
                            attempt,
                            version: Seq(version),
                            outcome,
                            latency_ms,
                            digest: Digest(d),
                            detail,
                        })
                    }
                ),
            (file(), "[a-z]{1,8}").prop_map(|(file, name)| RecordKind::CallbackRemoved {
                project: file.project,
                name: CallbackName::new(&name).unwrap(),
            }),
            Just(RecordKind::CallbackPut {
                project: ProjectId::new("p").unwrap(),
                name: CallbackName::new("site").unwrap(),
                callback: Arc::new(
                    Callback::from_json(r#"{"url":"https://example.org/a"}"#).unwrap()
                ),
            }),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        (number(), number(), kind()).prop_map(|(seq, at, kind)| Record {
            seq: Seq(seq),
            at: Timestamp(at),
            kind,
        })
    }

    proptest! {
        /// Every record of the three common kinds is read exactly as serde reads it; every
        /// other record is left to serde.
        #[test]
        fn reads_what_serde_reads_or_declines(record in record()) {
            let bytes = encode(&record);
            let common = matches!(
                &record.kind,
                RecordKind::ChangeAppended { callbacks: None, .. }
                    | RecordKind::Ticked
                    | RecordKind::AttemptFinished(_)
            );
            let got = decode_alone(&bytes);
            if common {
                prop_assert_eq!(got.as_ref(), Some(&record));
            } else {
                prop_assert_eq!(got, None);
            }
        }

        /// Damaged bytes — cut short, extended, or with one byte changed — are never read
        /// differently from serde: either the same record or `None`.
        #[test]
        fn damaged_bytes_never_read_differently(
            record in record(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0u8..3,
        ) {
            let mut bytes = encode(&record);
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
            if let Some(got) = decode_alone(&bytes) {
                prop_assert_eq!(Some(got), serde_decode(&bytes));
            }
        }

        /// A reader that keeps the last ids (damaged records among the rest) reads every
        /// record exactly as a reader starting afresh does.
        #[test]
        fn kept_ids_change_nothing(
            records in prop::collection::vec((record(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 1..20),
        ) {
            let mut ids = RecentIds::default();
            for (record, at, byte, damage) in records {
                let mut bytes = encode(&record);
                if damage {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                prop_assert_eq!(decode(&bytes, &mut ids), decode_alone(&bytes));
            }
        }
    }

    #[test]
    fn a_marker_wider_than_the_type_is_refused_as_serde_refuses_it() {
        // `attempt` is a u32: a u64 marker there is an error for serde, so `None` here.
        let record = Record {
            seq: Seq(1),
            at: Timestamp(2),
            kind: RecordKind::Ticked,
        };
        let mut bytes = encode(&record);
        assert_eq!(decode_alone(&bytes), Some(record));
        bytes[2] = U64_MARKER; // the variant index, a u32
        bytes.extend_from_slice(&4u64.to_le_bytes());
        assert_eq!(decode_alone(&bytes), None);
        assert_eq!(serde_decode(&bytes), None);
    }
}
