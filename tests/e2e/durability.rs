//! The log off the happy path, through the real daemon: an index damaged while cbd was
//! stopped is rebuilt from the segments at the next start with nothing lost, and retention
//! removes old history into archives that, imported with an export, replay the whole story.
//! (Power loss and damage at every write are the store's own tests, on a simulated disk; a
//! full disk is `diskfull`.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cbctl::cbctl;
use crate::support::{snapshot, Cbd, Receiver};

/// The sled index dir cbd is using (`index-N`, the newest).
fn index_dir(data: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("index-")
        })
        .collect();
    dirs.sort_by_key(|p| {
        p.file_name().unwrap().to_string_lossy()["index-".len()..]
            .parse::<u64>()
            .unwrap()
    });
    dirs.pop().expect("an index dir")
}

/// Ways an index gets damaged while cbd is stopped: deleted by a careless cleanup, cut by a
/// full disk or a bad copy, overwritten by a bad block, its config emptied.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Deleted,
    Truncated,
    Overwritten,
    ConfEmptied,
    EmptySnapshotLeft,
}

fn damage(data: &Path, how: Damage) {
    let index = index_dir(data);
    let db = index.join("db");
    match how {
        Damage::Deleted => std::fs::remove_dir_all(&index).unwrap(),
        Damage::Truncated => {
            let len = std::fs::metadata(&db).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
        Damage::Overwritten => {
            use std::io::{Seek, SeekFrom, Write};
            let len = std::fs::metadata(&db).unwrap().len();
            let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            f.seek(SeekFrom::Start(len / 3)).unwrap();
            f.write_all(&vec![0xA5; (len / 3).min(64 * 1024) as usize])
                .unwrap();
        }
        Damage::ConfEmptied => std::fs::write(index.join("conf"), b"").unwrap(),
        // What a start on a full disk left behind before cb owned its log.
        Damage::EmptySnapshotLeft => {
            std::fs::write(index.join("snap.00000000000FFFFF.generating"), b"").unwrap()
        }
    }
}

/// The seqs of every file's newest change.
fn newest_versions(log: &[Value]) -> HashMap<String, u64> {
    let mut newest = HashMap::new();
    for line in log.iter().filter(|l| l["kind"] == "change") {
        let seq = line["seq"].as_u64().unwrap();
        let e = newest
            .entry(line["file_id"].as_str().unwrap().to_owned())
            .or_insert(0);
        *e = seq.max(*e);
    }
    newest
}

fn wait_all_delivered(cbd: &Cbd, receiver: &Receiver) {
    let newest = newest_versions(&cbd.log());
    cbd.wait_for(
        "every file's newest change delivered",
        Duration::from_secs(20),
        || {
            let got: HashMap<String, u64> =
                receiver.received().iter().fold(HashMap::new(), |mut m, r| {
                    let e = m.entry(r.field("id").unwrap()).or_insert(0);
                    *e = r.version().max(*e);
                    m
                });
            newest.iter().all(|(f, v)| got.get(f) == Some(v))
        },
    );
}

/// Changes and deliveries, cbd stopped, its index damaged five ways in turn: every start
/// serves the same log (every acknowledged change and outcome, byte for byte through the
/// API), redelivers nothing it had delivered, takes new changes, and the log replays clean.
#[test]
fn a_damaged_index_is_rebuilt_at_start_and_nothing_is_lost() {
    let receiver = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "leading": true, "window_secs": 1}),
    );
    for round in 0..5 {
        let lines: Vec<Value> = (0..40)
            .map(|f| {
                let id = format!("f{f}");
                json!({"project": "p", "file_id": id, "event": "rated", "file": snapshot(&id, round * 100 + f)})
            })
            .collect();
        cbd.batch(&lines);
    }
    wait_all_delivered(&cbd, &receiver);
    let mut before = cbd.log();
    assert!(cbd.terminate().success());

    for (n, how) in [
        Damage::Deleted,
        Damage::Truncated,
        Damage::Overwritten,
        Damage::ConfEmptied,
        Damage::EmptySnapshotLeft,
    ]
    .into_iter()
    .enumerate()
    {
        let delivered = receiver.count();
        damage(&cbd.dir, how);
        let said_before = cbd.stderr().len();
        cbd.start_again();
        let log = cbd.log();
        assert!(
            log.len() >= before.len() && log[..before.len()] == before[..],
            "{how:?}: the log served after the damage is not the log before it"
        );
        // No machine moved backwards: everything delivered stays delivered.
        for f in 0..40 {
            let m = cbd.machine("p", &format!("f{f}"), "site");
            assert_eq!(m["state"], "sent", "{how:?} f{f}: {m}");
        }
        // New changes are taken and delivered through the new index.
        let id = format!("new{n}");
        cbd.change("p", &id, "uploaded", snapshot(&id, 1));
        receiver.wait_for_count(delivered + 1, Duration::from_secs(10));
        before = cbd.log();
        assert!(cbd.terminate().success());
        assert_eq!(
            receiver.count(),
            delivered + 1,
            "{how:?}: only the new change was delivered"
        );
        let said = cbd.stderr()[said_before..]
            .lines()
            .filter(|l| l.contains("index"))
            .collect::<Vec<_>>()
            .join(" / ");
        eprintln!(
            "{how:?}: {} log lines served whole; cbd said: {}",
            before.len(),
            if said.is_empty() {
                "nothing about its index (sled recovered it; caught up or reused)"
            } else {
                &said
            }
        );
    }
    // The deleted index cannot have been reused.
    assert!(
        cbd.stderr()
            .contains("rebuilt the log's index from its segments"),
        "{}",
        cbd.stderr()
    );
    let (code, out, err) = cbctl(&cbd.dir, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("divergences: none"), "{out}");
}

/// A snapshot big enough (about 1 KiB) that a few dozen changes fill a 64 KiB segment.
fn big_snapshot(id: &str, counter: usize) -> Value {
    let mut v = snapshot(id, counter);
    v["description"] = json!(format!("{counter:>8} ").repeat(100));
    v
}

fn metric(cbd: &Cbd, name: &str) -> Option<f64> {
    let (_, text) = cbd.call("GET", "/metrics", None, None);
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// cbd with `--retain 4s`, 64 KiB segments and an archive dir: old segments are removed
/// while it runs, into archives. The log then replays clean from its base, history and
/// rewind say where kept history begins, and the archives imported with an export replay
/// the whole history, every change ever acknowledged included.
#[test]
fn retention_removes_old_history_into_archives_that_replay_whole() {
    let receiver = Receiver::start();
    let temp = tempfile::tempdir().unwrap();
    let archive = temp.path().join("archive");
    let mut cbd = Cbd::start(&[
        "--allow-private-targets",
        "--retain",
        "4s",
        "--segment-bytes",
        "64KiB",
        "--archive-dir",
        archive.to_str().unwrap(),
    ]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 0}),
    );
    let mut acknowledged = 0;
    for round in 0..6 {
        let lines: Vec<Value> = (0..50)
            .map(|f| {
                let id = format!("f{f}");
                json!({"project": "p", "file_id": id, "event": "rated", "file": big_snapshot(&id, round * 100 + f)})
            })
            .collect();
        cbd.batch(&lines);
        acknowledged += lines.len();
    }
    wait_all_delivered(&cbd, &receiver);
    // Enough changes to other files to fill a segment of their own, so that every record
    // of f0..f49 lies in segments before it.
    let filler: Vec<Value> = (0..60)
        .map(|g| {
            let id = format!("g{g}");
            json!({"project": "p", "file_id": id, "event": "uploaded", "file": big_snapshot(&id, g)})
        })
        .collect();
    cbd.batch(&filler);
    acknowledged += filler.len();
    wait_all_delivered(&cbd, &receiver);
    // The horizon is measured on the log's own clock, its newest record: once that is 4 s
    // past a segment's successor's start, the segment goes (looked at every second).
    std::thread::sleep(Duration::from_millis(4500));
    cbd.change("p", "f50", "uploaded", big_snapshot("f50", 50));
    acknowledged += 1;
    cbd.wait_for("the base to advance", Duration::from_secs(30), || {
        metric(&cbd, "cb_base_seq").is_some_and(|s| s > 0.0)
    });
    // Changes after the base, to files with and without history before it.
    for f in [0, 1, 60] {
        let id = format!("f{f}");
        cbd.change("p", &id, "moderated", big_snapshot(&id, 1000 + f));
        acknowledged += 1;
    }
    wait_all_delivered(&cbd, &receiver);
    let base = metric(&cbd, "cb_base_seq").unwrap() as u64;
    // A file whose every change is before the base is still served, and redeliverable.
    let v = cbd.get("/v1/files/p/f7");
    let f7 = newest_versions(&cbd.log())["f7"];
    assert!(
        f7 <= base,
        "f7's newest change {f7} is before the base {base}"
    );
    assert_eq!(v["version"].as_u64(), Some(f7), "{v}");
    assert_eq!(v["file"]["counter"], "507", "the newest snapshot: {v}");
    let delivered = receiver.count();
    let (status, v) = cbd.json("POST", "/v1/files/p/f7/redeliver?callback=site", None);
    assert_eq!(status, 202, "{v}");
    receiver.wait_for_count(delivered + 1, Duration::from_secs(10));
    let again = receiver.received().pop().unwrap();
    assert_eq!(again.field("id").as_deref(), Some("f7"));
    assert_eq!(again.version(), f7);
    assert!(cbd.terminate().success());

    let (code, out, err) = cbctl(&cbd.dir, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("from the log's base at seq"), "{out}");
    assert!(out.contains("divergences: none"), "{out}");
    let (code, out, err) = cbctl(&cbd.dir, &["history", "p/f0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kept history begins after seq"), "{out}");
    let (code, _, err) = cbctl(&cbd.dir, &["rewind", "p/f0", "--to", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("before the log's base"), "{err}");

    let mut archives: Vec<PathBuf> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.zst"))
        .collect();
    archives.sort();
    assert!(!archives.is_empty(), "no archive written");
    let (code, export, err) = cbctl(&cbd.dir, &["export"]);
    assert_eq!(code, 0, "{err}");
    let first: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "base", "{first}");
    let export_file = temp.path().join("export.ndjson");
    std::fs::write(&export_file, &export).unwrap();

    // The kept history alone imports and replays from the same base.
    let kept = temp.path().join("kept");
    let (code, out, err) = cbctl(&kept, &["import", export_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cbctl(&kept, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("from the log's base at seq {base}")),
        "{out}"
    );
    assert!(out.contains("divergences: none"), "{out}");

    // The archives then the export: the whole history, from seq 1.
    let whole = temp.path().join("whole");
    let mut args = vec!["import".to_owned()];
    args.extend(archives.iter().map(|p| p.to_string_lossy().into_owned()));
    args.push(export_file.to_string_lossy().into_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = cbctl(&whole, &args);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cbctl(&whole, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("from the log's base"), "{out}");
    assert!(out.contains("divergences: none"), "{out}");
    let (code, all, err) = cbctl(&whole, &["export"]);
    assert_eq!(code, 0, "{err}");
    let changes = all
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["kind"] == "change")
        .count();
    assert_eq!(
        changes, acknowledged,
        "every acknowledged change is in the whole history"
    );
}
