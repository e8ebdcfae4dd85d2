//! A data dir written by cb before format 4 (records in sled) opens: it is migrated once to
//! the segment log, and everything it held reads back exactly as that cb exported it.
//!
//! The fixture was made by the last format-3 build (`fixtures/make_format3_fixture.py`: a
//! real cbd with callbacks of every kind, retries, a 410, per-file callbacks, a redeliver,
//! XML and batch changes, stopped with SIGTERM), with that build's `cbctl export` beside it.

use std::io::Read;
use std::path::Path;

use cb_core::Seq;
use cb_store::{Store, StoreOptions};

fn unpack(into: &Path) {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format3-dir.tar.zst"
    ))
    .unwrap();
    let tar = zstd::decode_all(&bytes[..]).unwrap();
    tar::Archive::new(&tar[..]).unpack(into).unwrap();
}

fn expected_export() -> String {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format3-export.ndjson.zst"
    ))
    .unwrap();
    let mut out = String::new();
    zstd::Decoder::new(&bytes[..])
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn a_format_3_dir_is_migrated_once_and_exports_as_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    unpack(tmp.path());
    let dir = tmp.path().join("data");
    assert!(
        dir.join("log").join("db").exists(),
        "the fixture is a format-3 dir"
    );
    let expected = expected_export();
    for round in 0..2usize {
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let migrated = store.recovery().migrated.clone();
        if round == 0 {
            let m = migrated.expect("migrated at the first open");
            assert_eq!((m.from_format, m.records), (3, 447));
        } else {
            assert_eq!(migrated, None, "migrated once only");
        }
        assert!(
            !dir.join("log").exists() && !dir.join("bodies").exists(),
            "the old files are gone"
        );
        let mut out = Vec::new();
        store.export(Seq(1), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        // The second open also has the tick the first one appended.
        assert_eq!(out.lines().count(), expected.lines().count() + round);
        for (i, (got, want)) in out.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        // The format-3 checkpoint still matches its record: restore starts from it.
        let restored = store.restore().unwrap();
        assert_eq!(
            restored.checkpoint,
            Some(Seq(447)),
            "{:?}",
            restored.damaged
        );
        assert!(restored.damaged.is_empty());
        assert_eq!(restored.core.last_seq(), Some(Seq(447 + round as u64)));
        // Per-file lookups work on the migrated log.
        let file = cb_core::FileKey::new(
            cb_core::ProjectId::new("acme").unwrap(),
            cb_core::FileId::new("f1").unwrap(),
        );
        let latest = store
            .latest_version(&file)
            .unwrap()
            .expect("f1 has changes");
        assert!(store.snapshot(latest).unwrap().is_some());
        assert!(!store.file_records(&file).unwrap().is_empty());
        if round == 0 {
            // And the log goes on.
            let last = store.last_seq().unwrap();
            store
                .append(vec![cb_store::Input::Record(cb_core::RecordKind::Ticked)])
                .unwrap();
            assert_eq!(store.last_seq(), Some(Seq(last.0 + 1)));
        }
    }
}

/// A migration cut short (the staging dir left, the old log untouched) is redone.
#[test]
fn an_interrupted_migration_is_redone() {
    let tmp = tempfile::tempdir().unwrap();
    unpack(tmp.path());
    let dir = tmp.path().join("data");
    let staging = dir.join("segments.migrating");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("00000001.seg"), b"half a segment").unwrap();
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(store.last_seq(), Some(Seq(447)));
    assert!(!staging.exists());
}

/// An old log that cannot be read is refused with the steps that move it by hand, and left
/// as it was.
#[test]
fn an_unreadable_old_log_is_refused_with_the_export_import_steps() {
    let tmp = tempfile::tempdir().unwrap();
    unpack(tmp.path());
    let dir = tmp.path().join("data");
    // The bodies are gone: the old log cannot give its changes.
    std::fs::remove_dir_all(dir.join("bodies")).unwrap();
    let err = Store::open(&dir, StoreOptions::default())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        matches!(err, cb_store::Error::Migration { format: 3, .. }),
        "{text}"
    );
    assert!(text.contains("export") && text.contains("import"), "{text}");
    assert!(
        dir.join("log").join("db").exists(),
        "the old log is untouched"
    );
    assert!(!dir.join("segments").exists());
    assert!(
        !dir.join("segments.migrating").exists(),
        "the half copy is removed"
    );
}
