//! The log and the checkpoints are written with bincode 2 (a format that is not
//! self-describing): every record, effect and checkpoint of random histories must round-trip
//! through it exactly, as they do through JSON.

mod support;

use cb_core::{Checkpoint, Effect, Record};
use proptest::prelude::*;

fn bin<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encodes")
}

fn unbin<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    let (v, used) =
        bincode::serde::decode_from_slice(b, bincode::config::standard()).expect("decodes");
    assert_eq!(used, b.len(), "decoding consumes every byte");
    v
}

fn history() -> &'static str {
    "put a window=0 backoff=1 retry_for=2 events=rated,moderated
     put b window=10 leading
     @0 change f1 rated
     @0 tick
     @0 fail f1 a 503 retry_after=3
     @1 change f2 moderated
     @1 tick
     @3 tick
     @3 ok f1 a
     @4 ok f1 b
     @4 redeliver f1 a
     @5 gone f1 a
     @5 disable f1 a 12
     @6 rm b"
}

#[test]
fn records_effects_and_checkpoints_round_trip_through_bincode() {
    let sim = support::sim(history());
    for r in &sim.log {
        let back: Record = unbin(&bin(r));
        assert_eq!(&back, r);
    }
    for effects in &sim.effects {
        let back: Vec<Effect> = unbin(&bin(effects));
        assert_eq!(&back, effects);
    }
    let cp = sim.core.checkpoint();
    let back: Checkpoint = unbin(&bin(&cp));
    assert_eq!(back, cp);
}

#[test]
fn callbacks_with_one_or_several_secrets_round_trip_through_bincode() {
    for secret in [
        r#""whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw""#,
        r#"["whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]"#,
    ] {
        let json = format!(r#"{{"url":"https://cms.example.com/cb","secret":{secret}}}"#);
        let cb = cb_core::Callback::from_json(&json).unwrap();
        let back: cb_core::Callback = unbin(&bin(&cb));
        assert_eq!(back, cb, "{secret}");
    }
}

proptest! {
    #[test]
    fn snapshots_round_trip_through_bincode(
        pairs in proptest::collection::btree_map("[a-z][a-z0-9_]{0,8}", any::<String>(), 0..20)
    ) {
        let snapshot = cb_core::Snapshot::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let back: cb_core::Snapshot = unbin(&bin(&snapshot));
        prop_assert_eq!(back, snapshot);
    }
}

/// A file's machines are kept inline (`Machines`, a small vector) where they were a `Vec`:
/// they must encode as the same sequence, so that checkpoints written before still decode.
#[test]
fn inline_machines_encode_as_the_vec_they_replaced() {
    // Two files with a machine of each callback.
    let sim = support::sim(
        "put a window=10
         put b window=10
         @0 change f1 rated
         @1 change f2 rated",
    );
    let cp = sim.core.checkpoint();
    let all: Vec<_> = cp
        .files
        .iter()
        .flat_map(|(_, e)| e.machines.to_vec())
        .collect();
    assert_eq!(all.len(), 4, "the history leaves machines to encode");
    // None, one (inline), two (spilled), four.
    for n in [0, 1, 2, 4] {
        let as_vec = all[..n].to_vec();
        let machines: cb_core::Machines = as_vec.iter().cloned().collect();
        assert_eq!(machines.spilled(), n > 1);
        assert_eq!(bin(&machines), bin(&as_vec), "{n} machines");
        let back: cb_core::Machines = unbin(&bin(&as_vec));
        assert_eq!(back, machines);
    }
}
