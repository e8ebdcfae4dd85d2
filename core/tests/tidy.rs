//! Architecture invariants stated as absences, checked on the source: the core has no I/O,
//! no clock, no randomness, no async and no threads, in its code or its dependencies; every
//! source file says what it owns in a `//!` paragraph.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn core_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 10, "found the sources");
    files
}

#[test]
fn core_code_does_no_io_reads_no_clock_draws_no_randomness() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::io::stdin",
        "std::process",
        "SystemTime",
        "Instant",
        "std::thread",
        "std::env",
        "async fn",
        ".await",
        "tokio",
        "rand::",
        "thread_rng",
        "RandomState",
        "HashMap<",
        "HashSet<",
        "static mut",
        "unsafe ",
    ];
    for path in core_sources() {
        let text = fs::read_to_string(&path).unwrap();
        for word in forbidden {
            // FxHashMap and FxHashSet are allowed: they are deterministic (no random seed)
            // and never iterated into outputs unsorted.
            let hits = text.matches(word).count()
                - match word {
                    "HashMap<" => text.matches("FxHashMap<").count(),
                    "HashSet<" => text.matches("FxHashSet<").count(),
                    _ => 0,
                };
            assert_eq!(hits, 0, "{} uses {word:?}", path.display());
        }
    }
}

#[test]
fn core_depends_only_on_pure_crates() {
    let manifest =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    let allowed = [
        "serde",
        "serde_json",
        "quick-xml",
        "sha2",
        "smol_str",
        "url",
        "form_urlencoded",
        "thiserror",
        "rustc-hash",
        "http",
        "hex",
        // Standard Webhooks signing: HMAC and base64 are pure functions of their input.
        "hmac",
        "base64",
        // A file's machines kept inline: a container, no I/O.
        "smallvec",
    ];
    for line in deps
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['.', '=', ' ']).next().unwrap();
        assert!(
            allowed.contains(&name),
            "core depends on {name:?}, which is not on the pure list"
        );
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    for path in core_sources() {
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! paragraph",
            path.display()
        );
    }
}
