//! The store's benchmark: durable appends (batches of 1000; 64 concurrent single-record
//! appenders), the fold rate from the log, and restart from a checkpoint — each beside the
//! raw file ceiling measured in the same run on the same disk. Prints what it measured.
//!
//! `cargo run --release -p cb-store --example store_bench -- [--changes N] [--files N]
//!  [--seconds S] [--dir PATH]`
//! (defaults: 1,000,000 changes over 100,000 files for the fold and restart; 5 s per append
//! measurement; a temporary dir under the system temp dir).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cb_core::{Callback, Core, EventKind, FileKey, Seq, Snapshot};
use cb_store::synthetic::{self, file, seed_like, xorshift};
use cb_store::{Change, Durability, Input, Store, StoreOptions};

struct Args {
    changes: u64,
    files: u64,
    seconds: f64,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        changes: 1_000_000,
        files: 100_000,
        seconds: 5.0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--changes" => a.changes = value().parse().expect("--changes N"),
            "--files" => a.files = value().parse().expect("--files N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn fresh(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn main() {
    let a = args();
    let tmp = tempfile::tempdir().unwrap();
    let root = a.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&root).unwrap();
    let window = Duration::from_secs_f64(a.seconds);
    let sample = seed_like(&file(0), 0);
    let body_bytes: usize = sample.iter().map(|(n, v)| n.len() + v.len()).sum();
    println!(
        "# cb-store benchmark: {} on {}",
        env!("CARGO_PKG_VERSION"),
        root.display()
    );
    println!(
        "snapshot: {} fields, {} bytes of names and values ({} bytes as XML)",
        sample.len(),
        body_bytes,
        cb_core::render(
            &sample,
            &Callback::from_json(r#"{"url":"https://x.org"}"#).unwrap()
        )
        .bytes
        .len()
    );

    // ---- ceilings: a raw file on the same disk ----
    {
        use std::io::Write;
        let path = fresh(&root, "raw-file");
        std::fs::create_dir_all(&path).unwrap();
        let mut f = std::fs::File::create(path.join("f")).unwrap();
        let one = vec![7u8; 1500];
        let (mut n, t) = (0u64, Instant::now());
        while t.elapsed() < window {
            f.write_all(&one).unwrap();
            f.sync_data().unwrap();
            n += 1;
        }
        println!(
            "ceiling  file append 1.5 KB + fdatasync, one thread:         {:>10.0} syncs/s",
            rate(n, t.elapsed())
        );
        let thousand = vec![7u8; 1500 * 1000];
        let (mut n, t) = (0u64, Instant::now());
        while t.elapsed() < window {
            f.write_all(&thousand).unwrap();
            f.sync_data().unwrap();
            n += 1000;
        }
        println!(
            "ceiling  file append 1000 x 1.5 KB + fdatasync:               {:>10.0} values/s",
            rate(n, t.elapsed())
        );
    }

    // ---- durable appends through the store ----
    for durability in [Durability::Sync] {
        let store = Store::open(
            &fresh(&root, "append-batch"),
            StoreOptions {
                durability,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        // Inputs are cloned from a prebuilt pool on another thread, as the daemon parses
        // requests on its own threads while the store commits: this measures the store.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Input>>(4);
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (stop, files) = (stop.clone(), a.files);
            let pool: Vec<(FileKey, Snapshot)> = (0..4096)
                .map(|i| {
                    let f = file(i % files);
                    let s = seed_like(&f, i);
                    (f, s)
                })
                .collect();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                while !stop.load(Ordering::Relaxed) {
                    let inputs: Vec<Input> = (0..1000)
                        .map(|_| {
                            let (f, snapshot) = pool[(xorshift(&mut x) % 4096) as usize].clone();
                            Input::Change(Change {
                                file: f,
                                event: EventKind::Rated,
                                snapshot,
                                callbacks: None,
                            })
                        })
                        .collect();
                    if tx.send(inputs).is_err() {
                        break;
                    }
                }
            })
        };
        let _ = rx.recv(); // the producer is running
        let (mut n, t) = (0u64, Instant::now());
        while t.elapsed() < window {
            let inputs = rx.recv().unwrap();
            store.append(inputs).unwrap();
            n += 1000;
        }
        let elapsed = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        producer.join().unwrap();
        println!(
            "store    batches of 1000, one appender, {:<10}             {:>10.0} changes/s",
            format!("{durability:?}:"),
            rate(n, elapsed),
        );
    }
    for durability in [Durability::Sync] {
        let store = Store::open(
            &fresh(&root, "append-concurrent"),
            StoreOptions {
                durability,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let threads: Vec<_> = (0..64u64)
            .map(|c| {
                let (store, stop, count) = (store.clone(), stop.clone(), count.clone());
                let files = a.files;
                let pool: Vec<(FileKey, Snapshot)> = (0..64)
                    .map(|i| {
                        let f = file((c * 64 + i) % files);
                        let s = seed_like(&f, i);
                        (f, s)
                    })
                    .collect();
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (c + 1);
                    while !stop.load(Ordering::Relaxed) {
                        let (f, snapshot) = pool[(xorshift(&mut x) % 64) as usize].clone();
                        store
                            .append(vec![Input::Change(Change {
                                file: f,
                                event: EventKind::Rated,
                                snapshot,
                                callbacks: None,
                            })])
                            .unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        let n = count.load(Ordering::Relaxed);
        let elapsed = t.elapsed();
        for th in threads {
            th.join().unwrap();
        }
        println!(
            "store    64 concurrent single-record appenders, {:<10}     {:>10.0} changes/s",
            format!("{durability:?}:"),
            rate(n, elapsed)
        );
    }

    // ---- a realistic log: fold rate and restart ----
    let dir = fresh(&root, "log");
    let t = Instant::now();
    let built = synthetic::build_log(&dir, a.changes, a.files, 60, |_| {}).unwrap();
    let (records, last_checkpointable) = (built.records, built.checkpointable);
    println!(
        "log      built {records} records ({} changes over {} files, with ticks and outcomes) in {:.1} s",
        a.changes,
        a.files,
        t.elapsed().as_secs_f64()
    );
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    println!(
        "log      sled size on disk: {:.0} MB",
        store.size_on_disk().unwrap() as f64 / 1e6
    );
    // Decode only, then decode + fold (what `cbctl replay` does), from a warm cache.
    for pass in ["cold", "warm"] {
        let t = Instant::now();
        let mut n = 0u64;
        for r in store.records(Seq(1)) {
            std::hint::black_box(r.unwrap());
            n += 1;
        }
        println!(
            "fold     read + decode only ({pass}):                          {:>10.0} records/s",
            rate(n, t.elapsed())
        );
    }
    let t = Instant::now();
    let mut core = Core::new();
    let mut effects = Vec::new();
    let mut n = 0u64;
    for r in store.records(Seq(1)) {
        core.apply(&r.unwrap(), &mut effects);
        effects.clear();
        n += 1;
    }
    let fold_time = t.elapsed();
    println!(
        "fold     read + decode + fold from the log:                  {:>10.0} records/s  ({n} records in {:.2} s)",
        rate(n, fold_time),
        fold_time.as_secs_f64()
    );
    let census = core.census();
    println!("fold     end state: {census:?}");

    // A checkpoint a little before the end, as the daemon would have written one.
    let mut core = Core::new();
    for r in store.records_between(Seq(1), last_checkpointable) {
        core.apply(&r.unwrap(), &mut effects);
        effects.clear();
    }
    let t = Instant::now();
    let cp = core.checkpoint();
    let taken = t.elapsed();
    let t = Instant::now();
    let written = store.write_checkpoint(&cp).unwrap();
    println!(
        "restart  checkpoint at {}: {} files in state, {:.1} MB; taking it {:.0} ms, writing it {:.0} ms",
        written.seq,
        cp.files.len(),
        written.bytes as f64 / 1e6,
        taken.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(store);
    for attempt in ["first", "second"] {
        let t = Instant::now();
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let opened = t.elapsed();
        let restored = store.restore().unwrap();
        let total = t.elapsed();
        println!(
            "restart  ({attempt}) open {:.0} ms + restore {:.0} ms (checkpoint {:?}, {} tail records) = {:.0} ms",
            opened.as_secs_f64() * 1e3,
            (total - opened).as_secs_f64() * 1e3,
            restored.checkpoint,
            restored.tail_records,
            total.as_secs_f64() * 1e3
        );
        drop(store);
    }
}
