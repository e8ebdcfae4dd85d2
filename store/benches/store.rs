//! Micro-benchmarks of the store's CPU paths, so that regressions show:
//! `cargo bench -p cb-store`. Appends are measured with `Durability::Buffered` (the disk's
//! share is `cbctl bench`'s durable figures and their ceilings).

use cb_core::{EventKind, Seq};
use cb_store::synthetic::{file, seed_like};
use cb_store::{Change, Durability, Input, Store, StoreOptions};

fn main() {
    divan::main();
}

fn buffered(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// `n` seed-sized changes over 100 files, versions numbered from `from`.
fn changes(n: u64, from: u64) -> Vec<Input> {
    (from..from + n)
        .map(|i| {
            let f = file(i % 100);
            Input::Change(Change {
                snapshot: seed_like(&f, i),
                file: f,
                event: EventKind::Rated,
                callbacks: None,
            })
        })
        .collect()
}

/// One append of a group of 1000 seed-sized changes (encode, chunk, index, sled batch).
#[divan::bench]
fn append_group_of_1000(bencher: divan::Bencher) {
    let tmp = tempfile::tempdir().unwrap();
    let store = buffered(tmp.path());
    let group = changes(1000, 0);
    bencher
        .counter(divan::counter::ItemsCount::new(1000usize))
        .with_inputs(|| group.clone())
        .bench_local_values(|inputs| store.append(inputs).unwrap());
}

/// Reading and decoding records (what a fold from the log costs before the core).
#[divan::bench]
fn read_records(bencher: divan::Bencher) {
    let tmp = tempfile::tempdir().unwrap();
    let store = buffered(tmp.path());
    for g in 0..20u64 {
        store.append(changes(1000, g * 1000)).unwrap();
    }
    bencher
        .counter(divan::counter::ItemsCount::new(20_000usize))
        .bench(|| store.records(Seq(1)).filter(|r| r.is_ok()).count());
}

/// Reading one snapshot by version, and the same through a sequential reader.
#[divan::bench(args = ["random", "sequential"])]
fn read_snapshots(bencher: divan::Bencher, how: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let store = buffered(tmp.path());
    store.append(changes(5000, 0)).unwrap();
    bencher
        .counter(divan::counter::ItemsCount::new(5000usize))
        .bench(|| match how {
            "random" => (1..=5000)
                .filter(|&v| store.snapshot(Seq(v)).unwrap().is_some())
                .count(),
            _ => {
                let mut reader = store.snapshot_reader();
                (1..=5000)
                    .filter(|&v| reader.get(Seq(v)).unwrap().is_some())
                    .count()
            }
        });
}
