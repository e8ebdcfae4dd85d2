//! Opening the log after anything — a clean stop, SIGKILL, power loss, a full disk, a
//! damaged index: find the durable tip, cut a torn tail, and bring the index up to the tip
//! (caught up from its marks when it agrees with the log, rebuilt from the segments when
//! it does not). No step here needs an operator.
//!
//! The order matters: the newest live segment is synced first (a process crash leaves
//! written-but-unsynced groups in the page cache, which must not be acted on before they
//! are on disk), then scanned from where the index stops; the scan alone decides the tip.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cb_core::{Record, Seq, Timestamp};

use crate::base::Base;
use crate::codec;
use crate::common_records::RecentIds;
use crate::error::{Error, Result};
use crate::index::{Index, IndexSettings, Marks, LOC_CHUNK};
use crate::seglog::{Segment, SegmentLog};
use crate::segment::{
    record_entries, GroupHead, Loc, NotAGroup, ScanEnd, SegmentHeader, SegmentKind, FORMAT_VERSION,
    GROUP_HEAD_LEN, RULES_VERSION, SEGMENT_HEADER_LEN,
};
use crate::watch::Watch;

/// What an open found and did, for the daemon's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The index was rebuilt from the segments: why, how many records, how long.
    pub rebuilt: Option<Rebuilt>,
    /// Records indexed from the segments because the index was behind them.
    pub caught_up: u64,
    /// A torn tail cut from the newest segment: never acknowledged.
    pub cut: Option<CutTail>,
    /// The log was migrated from an older format first.
    pub migrated: Option<crate::migrate::Migrated>,
}

/// An index rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// Why the index could not be used.
    pub reason: String,
    /// Records indexed.
    pub records: u64,
    /// How long it took.
    pub took: Duration,
    /// Why it is held in memory rather than in sled, if it is (sled hung, or a new index
    /// could not be made in it): until cbd restarts or sled is usable again.
    pub in_memory: Option<String>,
}

/// A torn tail cut at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutTail {
    /// The segment.
    pub segment: u32,
    /// Where the cut is.
    pub at: u64,
    /// What was found there.
    pub reason: String,
}

/// The log as found: the index, caught up; the tip and its time; where writing goes on.
pub(crate) struct Recovered {
    pub(crate) index: Index,
    pub(crate) tip: Seq,
    pub(crate) last_at: Timestamp,
    /// The writer's run that wrote the newest group scanned (0: none).
    pub(crate) incarnation: u32,
    /// The active segment and where its data ends.
    pub(crate) end: (u32, u64),
    pub(crate) report: Recovery,
}

/// How to recover.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) index: IndexSettings,
    pub(crate) segment_bytes: u64,
    pub(crate) now: Timestamp,
}

/// Recovers the log. sled may hang in any call, its own threads stuck: the recovery that
/// uses it runs on a thread of its own while this one watches its calls into sled. A hang,
/// or an index sled cannot make or keep, and the recovery runs again with the index in
/// memory ([`Index::in_memory`]): a start is never stuck on, nor refused for, the index.
pub(crate) fn recover(
    log: &Arc<SegmentLog>,
    base: Option<&Base>,
    settings: &Settings,
) -> Result<Recovered> {
    // Nothing acted on before it is on disk (see the module docs).
    if let Some((id, last)) = log.live().last() {
        last.file
            .sync_data()
            .map_err(|e| crate::seglog::sync_error(*id, e))?;
    }
    let watch = Arc::new(Watch::default());
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (log, base, settings, watch) =
            (log.clone(), base.cloned(), settings.clone(), watch.clone());
        std::thread::Builder::new()
            .name("cb-store-recover".into())
            .spawn(move || {
                let _ = tx.send(recover_twice(&log, base.as_ref(), &settings, Some(&watch)));
            })
            .map_err(Error::io("starting the recovery thread"))?
    };
    let limit = settings.index.hang_limit;
    let poll = (limit / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
    let why = loop {
        match rx.recv_timeout(poll) {
            Ok(Ok(recovered)) => return Ok(recovered),
            Ok(Err(e @ (Error::IndexUnavailable(_) | Error::DiskFull { .. }))) => {
                break e.to_string()
            }
            Ok(Err(e)) => return Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(why) = watch.check(limit) {
                    // The worker is stuck in sled: it is left there (every call it makes
                    // from now on fails, so it stops at its next step).
                    break why;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the recovery thread always sends"),
            },
        }
    };
    tracing::error!(reason = %why, "the log's index cannot be kept in sled; recovering with it in memory");
    let mut recovered = recover_twice(log, base, settings, None)?;
    let rebuilt = recovered.report.rebuilt.get_or_insert_with(|| Rebuilt {
        reason: why.clone(),
        records: 0,
        took: Duration::ZERO,
        in_memory: None,
    });
    rebuilt.reason.clone_from(&why);
    rebuilt.in_memory = Some(why);
    Ok(recovered)
}

/// One recovery, and a second one if the first found the index ahead of the log. `watch`:
/// the index goes to sled, its calls watched; `None`: the index is held in memory.
fn recover_twice(
    log: &Arc<SegmentLog>,
    base: Option<&Base>,
    settings: &Settings,
    watch: Option<&Arc<Watch>>,
) -> Result<Recovered> {
    let first = match watch {
        Some(_) => None,
        None => Some("the index is held in memory".to_string()),
    };
    match recover_with(log, base, settings, watch, first)? {
        Attempt::Done(recovered) => Ok(*recovered),
        // The tail sled had indexed was cut: the index is rebuilt for the log as it is now.
        Attempt::IndexAhead(reason, cut) => {
            match recover_with(log, base, settings, watch, Some(reason))? {
                Attempt::Done(mut recovered) => {
                    recovered.report.cut = recovered.report.cut.or(cut);
                    Ok(*recovered)
                }
                Attempt::IndexAhead(reason, _) => Err(Error::Corrupt {
                    seq: Seq(0),
                    reason,
                }),
            }
        }
    }
}

enum Attempt {
    Done(Box<Recovered>),
    /// The index reaches past the log's end (after a torn tail was cut): why, and the cut.
    IndexAhead(String, Option<CutTail>),
}

/// One recovery: with the index as found, or a fresh one when `rebuild` says why (in sled
/// with its calls watched by `watch`; in memory when `watch` is `None`).
fn recover_with(
    log: &Arc<SegmentLog>,
    base: Option<&Base>,
    settings: &Settings,
    watch: Option<&Arc<Watch>>,
    rebuild: Option<String>,
) -> Result<Attempt> {
    let started = Instant::now();
    let mut report = Recovery::default();
    let mut live = log.live();
    // An empty newest segment after another is a roll whose first group never came — or a
    // failed roll whose rename reached the disk while the log went on in the segment before
    // it. Either way the segments before it hold the log: it goes.
    while live.len() >= 2 {
        let (id, newest) = live.last().expect("two or more");
        let mut head = [0u8; GROUP_HEAD_LEN];
        let empty = match newest.file.read_exact_at(&mut head, SEGMENT_HEADER_LEN) {
            Ok(()) => matches!(GroupHead::decode(&head), Err(NotAGroup::Zeros)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => true,
            Err(e) => {
                return Err(Error::Io {
                    context: format!("reading log segment {id}"),
                    source: e,
                })
            }
        };
        if !empty {
            break;
        }
        log.remove(*id)?;
        log.storage()
            .sync_dir()
            .map_err(Error::io("syncing the segments directory"))?;
        live.pop();
    }
    let opened = match (rebuild, watch) {
        (Some(reason), _) => Err(reason),
        (None, None) => unreachable!("an index in memory is always built"),
        (None, Some(watch)) => {
            Index::open(&settings.index, watch.clone()).and_then(|(index, marks)| {
                let resume = check(&index, &marks, log, base).map_err(|e| e.to_string())?;
                Ok((index, resume))
            })
        }
    };
    let (index, resume, rebuilding) = match opened {
        Ok((index, resume)) => (index, resume, None),
        Err(reason) => {
            let index = match watch {
                // Its watcher went on without this recovery: it stops here.
                Some(watch) if watch.hung().is_some() => {
                    return Err(Error::IndexUnavailable(watch.hung().unwrap_or_default()))
                }
                Some(watch) => Index::fresh(&settings.index, watch.clone())?,
                None => Index::in_memory(&settings.index),
            };
            if let Some(base) = base {
                let kept = read_kept(log, base)?;
                index.set_base(base.seq, base.kept_segment);
                index.write_kept(base.seq, base.kept_segment, &kept)?;
            }
            (index, None, Some(reason))
        }
    };
    let base_seq = base.map_or(Seq(0), |b| b.seq);
    let mut last_at = base.map_or(Timestamp(0), |b| b.at);
    if live.is_empty() {
        let id = log.new_id();
        let header = SegmentHeader {
            format: FORMAT_VERSION,
            rules: RULES_VERSION,
            id,
            kind: SegmentKind::Live,
            first_seq: Seq(base_seq.0 + 1),
            created: settings.now,
        };
        log.create(header, settings.segment_bytes, 0)?;
        finish(&index, base_seq, rebuilding.is_some())?;
        if let Some(reason) = rebuilding {
            report.rebuilt = Some(Rebuilt {
                reason,
                records: 0,
                took: started.elapsed(),
                in_memory: None,
            });
        }
        return Ok(Attempt::Done(Box::new(Recovered {
            index,
            tip: base_seq,
            last_at,
            incarnation: 0,
            end: (id, SEGMENT_HEADER_LEN),
            report,
        })));
    }
    if live[0].1.header.first_seq != Seq(base_seq.0 + 1) {
        return Err(Error::Corrupt {
            seq: Seq(base_seq.0 + 1),
            reason: format!(
                "the log's first live segment ({}) starts at {}, not after its base {base_seq}",
                live[0].0, live[0].1.header.first_seq
            ),
        });
    }
    let (start_segment, start_at, mut next_seq) = match resume {
        Some((segment, group, first)) => (segment, group, first),
        None => (live[0].0, SEGMENT_HEADER_LEN, live[0].1.header.first_seq),
    };
    let mut ids = RecentIds::default();
    let mut notes: Vec<(Record, Loc, u32)> = Vec::with_capacity(LOC_CHUNK as usize);
    let mut incarnation = 0u32;
    let mut scanned = 0u64;
    let mut end = (start_segment, start_at);
    let last_id = live.last().expect("not empty").0;
    for (i, (id, segment)) in live.iter().enumerate() {
        if *id < start_segment {
            continue;
        }
        let from = if *id == start_segment {
            start_at
        } else {
            if segment.header.first_seq != next_seq {
                return Err(gap(live[i - 1].0, next_seq, *id, &segment.header));
            }
            SEGMENT_HEADER_LEN
        };
        let noted_before = index.noted();
        let scan = log.scan(*id, from, Some(next_seq), |group| {
            for entry in record_entries(&group.head, *id, group.at, group.records) {
                let entry = entry?;
                let payload = &entry.frame[4..];
                let record = codec::decode_checked(entry.seq, payload, &mut ids)?;
                last_at = record.at;
                incarnation = incarnation.max(group.head.incarnation);
                let crc = codec::frame_crc(entry.frame).expect("a checked frame");
                notes.push((record, entry.loc, crc));
            }
            if notes.len() >= LOC_CHUNK as usize {
                index.note(notes.iter().map(|(r, l, c)| (r, l, *c)));
                notes.clear();
                if rebuilding.is_some() {
                    // A rebuild writes as it goes (what it reads is on disk: synced above,
                    // or in a closed segment).
                    index.spill(index.noted(), false)?;
                }
            }
            next_seq = Seq(group.head.last.0 + 1);
            Ok(())
        })?;
        index.note(notes.iter().map(|(r, l, c)| (r, l, *c)));
        notes.clear();
        scanned += index.noted().0.saturating_sub(noted_before.0);
        match scan {
            ScanEnd::Clean { at } => {
                if *id == last_id {
                    // Whatever follows the data (leftovers of groups never acknowledged)
                    // is zeroed now, so that no later scan can take it for data.
                    log.cut(*id, at)?;
                }
                end = (*id, at);
            }
            ScanEnd::Torn { at, reason } if *id == last_id => {
                log.cut(*id, at)?;
                report.cut = Some(CutTail {
                    segment: *id,
                    at,
                    reason,
                });
                end = (*id, at);
            }
            ScanEnd::Torn { at, reason } => {
                // A segment is closed only once all of it is durable: a torn one before the
                // newest lost acknowledged records.
                return Err(Error::Corrupt {
                    seq: next_seq,
                    reason: format!("log segment {id} is damaged at offset {at} ({reason})"),
                });
            }
        }
    }
    let tip = Seq(next_seq.0 - 1);
    if tip < index.noted() {
        // The scan found less than sled had located (a damaged last group was cut).
        return Ok(Attempt::IndexAhead(
            format!(
                "it names records up to {} and the log ends at {tip}",
                index.noted()
            ),
            report.cut,
        ));
    }
    finish(&index, tip, rebuilding.is_some())?;
    match rebuilding {
        Some(reason) => {
            report.rebuilt = Some(Rebuilt {
                reason,
                records: scanned,
                took: started.elapsed(),
                in_memory: None,
            });
        }
        None => report.caught_up = scanned,
    }
    Ok(Attempt::Done(Box::new(Recovered {
        index,
        tip,
        last_at,
        incarnation,
        end,
        report,
    })))
}

/// After the scan: a rebuilt index is written whole and replaces the old ones; a reused one
/// only loses leftovers of an interrupted rebuild.
fn finish(index: &Index, tip: Seq, rebuilt: bool) -> Result<()> {
    if rebuilt {
        index.spill(tip, true)?;
        index.finish_rebuild()
    } else {
        index.remove_older()
    }
}

fn gap(prev: u32, next_seq: Seq, id: u32, header: &SegmentHeader) -> Error {
    Error::Corrupt {
        seq: next_seq,
        reason: format!(
            "log segment {prev} ends before it and segment {id} starts at {}",
            header.first_seq
        ),
    }
}

/// Checks an opened index against the log; returns where to resume scanning (segment,
/// group offset, the group's first seq), or `None` to scan from the first live record.
fn check(
    index: &Index,
    marks: &Marks,
    log: &SegmentLog,
    base: Option<&Base>,
) -> Result<Option<(u32, u64, Seq)>> {
    let want_base = base.map_or((Seq(0), 0), |b| (b.seq, b.kept_segment));
    if marks.base != want_base {
        return Err(Error::IndexUnavailable(format!(
            "it was built for base {} and the log's base is {}",
            marks.base.0, want_base.0
        )));
    }
    let Some((located, anchor)) = marks.located else {
        return Ok(None);
    };
    let loc = index.sled_loc(located)?.ok_or_else(|| {
        Error::IndexUnavailable(format!("it has no location for its mark {located}"))
    })?;
    let mut frame = Vec::new();
    log.read_frame(located, &loc, &mut frame)
        .map_err(|e| Error::IndexUnavailable(format!("its mark {located} cannot be read: {e}")))?;
    match codec::frame_seq(&frame) {
        Ok(seq) if seq == located && codec::frame_crc(&frame) == Some(anchor) => {}
        _ => {
            return Err(Error::IndexUnavailable(format!(
                "its mark {located} is not the log's record {located}"
            )))
        }
    }
    for (key, seq, tag) in index.file_anchors(marks.base.0)? {
        let found = index.sled_loc(seq)?.and_then(|loc| {
            let mut frame = Vec::new();
            log.read_frame(seq, &loc, &mut frame).ok()?;
            codec::decode_record(seq, &frame).ok()
        });
        if !found.is_some_and(|r| crate::index::entry_is(&r, &key, tag)) {
            return Err(Error::IndexUnavailable(format!(
                "its per-file entries name record {seq}, which is not the log's record {seq}"
            )));
        }
    }
    let Some(resume) = index.resume_point(marks)? else {
        return Ok(None);
    };
    let segment = log
        .get(resume.segment)
        .filter(|s| s.header.kind == SegmentKind::Live)
        .ok_or_else(|| {
            Error::IndexUnavailable(format!(
                "it points into segment {}, which is gone",
                resume.segment
            ))
        })?;
    let head = read_head(&segment, resume.group)
        .map_err(|why| Error::IndexUnavailable(format!("it points at no group: {why}")))?;
    Ok(Some((resume.segment, resume.group, head.first)))
}

fn read_head(segment: &Segment, at: u64) -> std::result::Result<GroupHead, String> {
    let mut buf = [0u8; GROUP_HEAD_LEN];
    segment
        .file
        .read_exact_at(&mut buf, at)
        .map_err(|e| e.to_string())?;
    GroupHead::decode(&buf).map_err(|e| e.to_string())
}

/// The kept segment's records with their locations.
pub(crate) fn read_kept(log: &SegmentLog, base: &Base) -> Result<Vec<(Record, Loc)>> {
    let mut kept = Vec::new();
    let mut ids = RecentIds::default();
    let end = log.scan(base.kept_segment, SEGMENT_HEADER_LEN, None, |group| {
        for entry in record_entries(&group.head, base.kept_segment, group.at, group.records) {
            let entry = entry?;
            let record = codec::decode_checked(entry.seq, &entry.frame[4..], &mut ids)?;
            kept.push((record, entry.loc));
        }
        Ok(())
    })?;
    if let ScanEnd::Torn { at, reason } = end {
        return Err(Error::Corrupt {
            seq: base.seq,
            reason: format!(
                "the base's kept segment {} is damaged at {at}: {reason}",
                base.kept_segment
            ),
        });
    }
    Ok(kept)
}
