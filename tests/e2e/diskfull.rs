//! A full disk, for real: cbd's data dir is a small tmpfs mounted for the test (CI runs as
//! root). While full, appends get 507 `disk_full` and nothing acknowledged is lost; reads
//! keep working; once space is freed cbd takes appends again without a restart; and a start
//! on the full disk leaves a dir the next start serves. Where mounting is refused (not
//! root), the same promises are checked on the store's simulated disk instead, and the test
//! says which ran.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{snapshot, wait_for, Cbd, Receiver};

/// A tmpfs mounted at a path for the test's life.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `filler` until a write fails; returns its size.
fn fill(filler: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut n = std::fs::metadata(filler).unwrap().len();
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(w) => n += w as u64,
        }
    }
    let _ = f.sync_all();
    n
}

/// Frees `bytes` of the filler (or all of it).
fn free(filler: &Path, bytes: Option<u64>) {
    let len = std::fs::metadata(filler).map(|m| m.len()).unwrap_or(0);
    let keep = bytes.map_or(0, |b| len.saturating_sub(b));
    std::fs::OpenOptions::new()
        .write(true)
        .open(filler)
        .unwrap()
        .set_len(keep)
        .unwrap();
}

/// A change of about 1.5 KB, as the seed's are.
fn fat(file_id: &str, n: usize) -> Value {
    let mut s = snapshot(file_id, n);
    s["notes"] = json!("n".repeat(1300));
    s
}

fn post(cbd: &Cbd, file_id: &str, n: usize) -> (u16, Value) {
    let body =
        json!({"project": "p", "file_id": file_id, "event": "rated", "file": fat(file_id, n)});
    cbd.json("POST", "/v1/changes", Some(&body))
}

#[test]
fn a_full_disk_is_answered_with_507_and_cbd_takes_appends_again_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let Some(_mount) = Mount::tmpfs(&data, "16m") else {
        eprintln!("disk-full e2e: mounting a tmpfs was refused (not root?); checking the same promises on the store's simulated disk");
        on_the_simulated_disk();
        return;
    };
    eprintln!("disk-full e2e: cbd on a 16 MiB tmpfs at {}", data.display());
    let receiver = Receiver::start();
    let mut cbd = Cbd::start_in(
        &data,
        &["--allow-private-targets", "--segment-bytes", "1MiB"],
    );
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 1, "leading": true}),
    );
    // Leave room for a little more than one segment and its reserve.
    let filler = tmp.path().join("data").join("filler");
    fill(&filler);
    free(&filler, Some(3 << 20));

    let mut acked: BTreeMap<u64, (String, usize)> = BTreeMap::new();
    let mut refused = None;
    for n in 0..50_000 {
        let file_id = format!("f{}", n % 40);
        match post(&cbd, &file_id, n) {
            (202, v) => {
                acked.insert(v["seq"].as_u64().unwrap(), (file_id, n));
            }
            (507, v) => {
                refused = Some(v);
                break;
            }
            (status, v) => panic!("change {n}: {status} {v}"),
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(refused["error"], "disk_full", "{refused}");
    assert!(
        acked.len() > 100,
        "{} changes before the disk was full",
        acked.len()
    );
    let (status, v) = post(&cbd, "refused", 0);
    assert_eq!(status, 507, "{v}");
    // A refused append appended nothing.
    assert!(
        !cbd.log().iter().any(|l| l["file_id"] == "refused"),
        "a 507 left a record"
    );

    // Reads work while full.
    let file = cbd.get("/v1/files/p/f1");
    assert!(file["version"].as_u64().is_some(), "{file}");
    let (status, health) = cbd.json("GET", "/healthz", None);
    assert_eq!(
        (status, health["status"].as_str()),
        (503, Some("disk_full")),
        "{health}"
    );
    let (status, metrics) = cbd.call("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(metrics.contains("cb_disk_free_bytes"), "{metrics}");

    // Space back: appends are taken again, no restart.
    free(&filler, None);
    wait_for("appends taken again", Duration::from_secs(15), &mut || {
        post(&cbd, "after", 1).0 == 202
    });
    let (status, health) = cbd.json("GET", "/healthz", None);
    assert_eq!(status, 200, "{health}");

    // Nothing acknowledged was lost: every 202 is in the log with its own snapshot.
    check_acked(&cbd, &acked);
    // And every file's latest change reaches the receiver.
    let mut latest: BTreeMap<String, usize> = BTreeMap::new();
    for (file_id, n) in acked.values() {
        latest.insert(file_id.clone(), *n);
    }
    wait_for(
        "every file's latest change delivered",
        Duration::from_secs(60),
        &mut || {
            let got: std::collections::HashSet<(String, String)> = receiver
                .received()
                .iter()
                .filter_map(|r| Some((r.field("id")?, r.field("counter")?)))
                .collect();
            latest
                .iter()
                .all(|(f, n)| got.contains(&(f.clone(), n.to_string())))
        },
    );

    // Full again, and cbd restarted on the full disk: whether it serves or stops, it changes
    // nothing a later start trips over.
    fill(&filler);
    cbd.terminate();
    let mut on_full = Cbd::try_start_in(
        &data,
        &["--allow-private-targets", "--segment-bytes", "1MiB"],
    );
    if let Some(cbd) = &mut on_full {
        eprintln!("disk-full e2e: cbd started on the full disk");
        assert!(cbd.last_seq() >= *acked.keys().next_back().unwrap());
        cbd.terminate();
    } else {
        let log = std::fs::read_to_string(data.with_extension("stderr")).unwrap_or_default();
        let said = log
            .lines()
            .rev()
            .find(|l| l.contains("cbd:") || l.contains("ERROR"))
            .unwrap_or("");
        eprintln!("disk-full e2e: cbd refused to start on the full disk: {said}");
        assert!(
            said.contains("disk full"),
            "a refusal names the full disk: {said}"
        );
    }
    free(&filler, None);
    let cbd = Cbd::start_in(
        &data,
        &["--allow-private-targets", "--segment-bytes", "1MiB"],
    );
    check_acked(&cbd, &acked);
    assert_eq!(post(&cbd, "later", 2).0, 202);
}

fn check_acked(cbd: &Cbd, acked: &BTreeMap<u64, (String, usize)>) {
    let log: BTreeMap<u64, Value> = cbd
        .log()
        .into_iter()
        .map(|l| (l["seq"].as_u64().unwrap(), l))
        .collect();
    for (seq, (file_id, n)) in acked {
        let line = log
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged change {seq} is missing"));
        assert_eq!(line["file_id"], file_id.as_str(), "{line}");
        assert_eq!(line["file"], fat(file_id, *n), "{line}");
    }
}

/// The same promises where no file system can be mounted: the store on a simulated disk
/// whose capacity runs out and comes back.
fn on_the_simulated_disk() {
    use cb_core::{EventKind, FileId, FileKey, ProjectId, Seq, Snapshot};
    use cb_store::sim::SimDisk;
    use cb_store::{Change, Error, Input, LogStorage, Store, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(7);
    let open = || {
        Store::open(
            tmp.path(),
            StoreOptions {
                storage: Some(LogStorage {
                    segments: disk.dir("segments"),
                    checkpoints: disk.dir("checkpoints"),
                }),
                segment_bytes: 64 * 1024,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    };
    let store = open();
    disk.set_capacity(Some(disk.used_bytes() + 200 * 1024));
    let change = |i: u64| {
        let mut b = Snapshot::builder();
        b.push("id", &i.to_string()).unwrap();
        b.push("blob", &"x".repeat(1500)).unwrap();
        Input::Change(Change {
            file: FileKey::new(
                ProjectId::new("p").unwrap(),
                FileId::new(&format!("f{}", i % 9)).unwrap(),
            ),
            event: EventKind::Rated,
            snapshot: b.finish().unwrap(),
            callbacks: None,
        })
    };
    let mut acked = Vec::new();
    let mut i = 0;
    let full = loop {
        i += 1;
        match store.append(vec![change(i)]) {
            Ok(a) => acked.push((a.first, i)),
            Err(e) => break e,
        }
        assert!(i < 10_000, "the simulated disk never filled");
    };
    assert!(matches!(full, Error::DiskFull { .. }), "{full}");
    disk.set_capacity(None);
    let a = store
        .append(vec![change(i)])
        .expect("taken again once there is room");
    acked.push((a.first, i));
    drop(store);
    let store = open();
    for (seq, i) in acked {
        let snap = store.snapshot(seq).unwrap().expect("acknowledged");
        assert_eq!(snap.get("id"), Some(i.to_string().as_str()));
    }
    assert!(store.last_seq() >= Some(Seq(1)));
}
