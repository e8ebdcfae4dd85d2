//! Crash tests: a child process appends from several threads and prints every sequence
//! number it was acknowledged; the parent SIGKILLs it at random moments, many times over,
//! reopens the data dir and checks that every acknowledged record is there, intact, and
//! that the log and its checkpoints restore. The child is this test binary re-run with
//! `CB_CRASH_DIR` set (see `crash_child`).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cb_core::{CallbackName, Core, RecordKind, Seq};
use cb_store::{CheckpointWriter, Durability, Input, Store, StoreOptions};
use support::*;

const THREADS: u64 = 4;
/// Small per-file index segments, so that kills also land while one is written.
const SPAN: u64 = 50;

/// The child: appends until killed. Does nothing when run as an ordinary test.
#[test]
#[ignore = "the child process of the crash tests; runs only with CB_CRASH_DIR set"]
fn crash_child() {
    let Ok(dir) = std::env::var("CB_CRASH_DIR") else {
        return;
    };
    let checkpoints = std::env::var("CB_CRASH_CHECKPOINTS").is_ok();
    let (records_tx, records_rx) = mpsc::channel();
    let options = StoreOptions {
        durability: Durability::Sync,
        index_segment_span: SPAN,
        on_commit: Some(Box::new(move |records: &[cb_core::Record]| {
            let _ = records_tx.send(records.to_vec());
        })),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.as_ref(), options).expect("child opens the store");
    // The child resumes a log: fold what is there, then keep folding what commits.
    let mut core = store.restore().expect("child restores").core;
    if checkpoints {
        let for_writer = store.clone();
        std::thread::spawn(move || {
            let writer = CheckpointWriter::spawn(for_writer, |r| {
                r.expect("checkpoint written");
            })
            .unwrap();
            let mut effects = Vec::new();
            let mut since = 0;
            for batch in records_rx {
                for r in batch {
                    if core.last_seq().is_some_and(|s| r.seq <= s) {
                        continue; // folded by the restore already
                    }
                    core.apply(&r, &mut effects);
                    effects.clear();
                    since += 1;
                }
                if since >= 20 && writer.offer(core.checkpoint()) {
                    since = 0;
                }
            }
        });
        store
            .append(vec![Input::Record(RecordKind::CallbackPut {
                project: project(),
                name: CallbackName::new("site").unwrap(),
                callback: callback(r#"{"url":"https://example.org/cb","window_secs":1}"#),
            })])
            .unwrap();
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let pid = std::process::id() as u64;
                for i in 0u64.. {
                    // 1–3 records a call; the file and n name the expected snapshot.
                    let n = 1 + i % 3;
                    let items: Vec<(u64, u64)> = (0..n)
                        .map(|j| (t * 100 + (i + j) % 7, pid * 1_000_000 + i * 10 + j))
                        .collect();
                    let inputs = items
                        .iter()
                        .map(|&(f, n)| {
                            change(file(f), EVENTS[(n % 4) as usize], seed_like(&file(f), n))
                        })
                        .collect();
                    let appended = store.append(inputs).expect("append");
                    let mut out = out.lock().unwrap();
                    for (seq, (f, n)) in appended.seqs().zip(items) {
                        writeln!(out, "ack {} {f} {n}", seq.0).unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A small deterministic generator for kill delays; the seed is printed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn kill_at_random_moments(rounds: usize, checkpoints: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::env::var("CB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (rerun with CB_CRASH_SEED={seed})");
    let mut rng = XorShift(seed);
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut restored_from_checkpoint = 0;
    for round in 0..rounds {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CB_CRASH_DIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if checkpoints {
            cmd.env("CB_CRASH_CHECKPOINTS", "1");
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut first_ack = None;
            let mut acks = Vec::new();
            loop {
                line.clear();
                // A line cut short by the kill was never a complete acknowledgement.
                if reader.read_line(&mut line).unwrap_or(0) == 0 || !line.ends_with('\n') {
                    break;
                }
                let parts: Vec<&str> = line.split_whitespace().collect();
                if parts.first() == Some(&"ack") {
                    let v: Vec<u64> = parts[1..].iter().map(|p| p.parse().unwrap()).collect();
                    acks.push((v[0], (v[1], v[2])));
                    if first_ack.is_none() {
                        first_ack = Some(());
                        let _ = tx.send(());
                    }
                }
            }
            acks
        });
        // Wait for the child to be appending, then kill it a random while later.
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the child acknowledged nothing within 60 s");
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 250));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(!acks.is_empty());
        acked.extend(acks);

        let store = Store::open(
            tmp.path(),
            StoreOptions {
                index_segment_span: SPAN,
                ..StoreOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let mut by_file: BTreeMap<u64, Vec<Seq>> = BTreeMap::new();
        for (&seq, &(f, _)) in &acked {
            by_file.entry(f).or_default().push(Seq(seq));
        }
        for (f, seqs) in &by_file {
            let indexed = store.file_seqs(&file(*f)).unwrap();
            for seq in seqs {
                assert!(
                    indexed.binary_search(seq).is_ok(),
                    "round {round}: record {seq} missing from the index of file {f}"
                );
            }
        }
        for (&seq, &(f, n)) in &acked {
            let record = store
                .record(Seq(seq))
                .unwrap_or_else(|e| panic!("round {round}: record {seq}: {e}"))
                .unwrap_or_else(|| panic!("round {round}: acknowledged record {seq} lost"));
            assert!(
                matches!(&record.kind, RecordKind::ChangeAppended { file: k, .. } if *k == file(f)),
                "round {round}: record {seq} is not the change it acknowledged"
            );
            assert_eq!(
                store.snapshot(Seq(seq)).unwrap(),
                Some(seed_like(&file(f), n)),
                "round {round}: snapshot of {seq}"
            );
        }
        let last = store.last_seq().expect("not empty").0;
        let mut expect = 1;
        for r in store.records(Seq(1)) {
            let r = r.unwrap_or_else(|e| panic!("round {round}: log unreadable: {e}"));
            assert_eq!(r.seq.0, expect, "round {round}: the log has a hole");
            expect += 1;
        }
        assert_eq!(expect - 1, last);
        let restored = store.restore().unwrap();
        assert!(
            restored.damaged.is_empty(),
            "round {round}: a kill left a damaged checkpoint: {:?}",
            restored.damaged
        );
        let mut full = Core::new();
        let mut effects = Vec::new();
        for r in store.records(Seq(1)) {
            full.apply(&r.unwrap(), &mut effects);
        }
        assert_eq!(
            restored.core.checkpoint(),
            full.checkpoint(),
            "round {round}"
        );
        if restored.checkpoint.is_some() {
            restored_from_checkpoint += 1;
        }
        drop(store);
    }
    eprintln!(
        "{rounds} kills, {} acknowledged records all present; {restored_from_checkpoint} restores from a checkpoint",
        acked.len()
    );
    if checkpoints {
        assert!(
            restored_from_checkpoint > 0,
            "no checkpoint was ever written"
        );
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    let started = Instant::now();
    kill_at_random_moments(12, false);
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn sigkill_while_checkpointing_never_damages_the_restore() {
    kill_at_random_moments(12, true);
}
