//! Example tests for every rule of SPEC §4 and every state transition, as small tables:
//! a history on the left, the effects and the machines' states after each record below it.
//! Times are in seconds; `dN` is the delivery opened by record N; `#n` the attempt; `vN` the
//! version (the sequence number of the file's latest change).

mod support;

use expect_test::{expect, Expect};

fn check(history: &str, expect: Expect) {
    expect.assert_eq(&support::run(history));
}

#[test]
fn rule_1_first_change_of_a_quiet_file_waits_one_window() {
    check(
        "put a window=10
         @3 change f1 rated
         @13 tick
         @13.2 ok f1 a",
        expect![[r#"
            #1  @0      put a window=10
            #2  @3      change f1 rated
                         f1#a: coalescing d2 due=13
            #3  @13     tick                         => start f1#a d2#1 v2 @13
                         f1#a: pending d2#1 v2
            #4  @13.200 ok f1 a
                         f1#a: sent d2 v2
        "#]],
    );
}

#[test]
fn rule_1_leading_delivers_the_first_change_at_once() {
    check(
        "put a window=10 leading
         @3 change f1 rated
         @3 tick
         @3.1 ok f1 a
         @5 change f1 rated
         @13 tick",
        expect![[r#"
            #1  @0      put a window=10 leading
            #2  @3      change f1 rated              => start f1#a d2#1 v2 @3
                         f1#a: pending d2#1 v2
            #3  @3      tick
                         f1#a: pending d2#1 v2
            #4  @3.100  ok f1 a
                         f1#a: sent d2 v2
            #5  @5      change f1 rated
                         f1#a: coalescing d5 due=13
            #6  @13     tick                         => start f1#a d5#1 v5 @13
                         f1#a: pending d5#1 v5
        "#]],
    );
}

/// A log written under rules version 1 is folded under them: a leading change's deadline
/// fires at the next record (here the tick), as of its own time, not in the change's step.
#[test]
fn rules_1_fire_a_deadline_a_record_sets_at_the_next_record() {
    expect![[r#"
        #1  @0      put a window=10 leading
        #2  @3      change f1 rated
                     f1#a: coalescing d2 due=3
        #3  @3      tick                         => start f1#a d2#1 v2 @3
                     f1#a: pending d2#1 v2
        #4  @3.100  ok f1 a
                     f1#a: sent d2 v2
    "#]]
    .assert_eq(&support::run_under_rules_1(
        "put a window=10 leading
         @3 change f1 rated
         @3 tick
         @3.1 ok f1 a",
    ));
}

#[test]
fn rule_1_next_delivery_waits_a_window_after_the_last_attempt() {
    check(
        "put a window=10 leading
         @0 change f1 rated
         @0 tick
         @1 ok f1 a
         @4 change f1 moderated
         @9.999 tick
         @10 tick",
        expect![[r#"
            #1  @0      put a window=10 leading
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      ok f1 a
                         f1#a: sent d2 v2
            #5  @4      change f1 moderated
                         f1#a: coalescing d5 due=10
            #6  @9.999  tick
                         f1#a: coalescing d5 due=10
            #7  @10     tick                         => start f1#a d5#1 v5 @10
                         f1#a: pending d5#1 v5
        "#]],
    );
}

#[test]
fn rule_1_abandoned_machine_restarts_on_a_new_change() {
    check(
        "put a window=0 backoff=1 retry_for=2
         @0 change f1 rated
         @0 tick
         @0 fail f1 a 500
         @1.2 tick
         @1.2 fail f1 a 500
         @2.4 tick
         @2.4 timeout f1 a
         @30 change f1 rated
         @30 tick",
        expect![[r#"
            #1  @0      put a window=0 backoff=1 retry_for=2
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @0      fail f1 a 500
                         f1#a: retrying d2 failed=1 next=0.963
            #5  @1.200  tick                         => start f1#a d2#2 v2 @0.963
                         f1#a: pending d2#2 v2
            #6  @1.200  fail f1 a 500
                         f1#a: retrying d2 failed=2 next=2.296
            #7  @2.400  tick                         => start f1#a d2#3 v2 @2.296
                         f1#a: pending d2#3 v2
            #8  @2.400  timeout f1 a
                         f1#a: abandoned d2 attempts=3
            #9  @30     change f1 rated              => start f1#a d9#1 v9 @30
                         f1#a: pending d9#1 v9
            #10 @30     tick
                         f1#a: pending d9#1 v9
        "#]],
    );
}

#[test]
fn rule_2_changes_while_coalescing_only_replace_the_snapshot() {
    check(
        "put a window=10
         @0 change f1 rated
         @1 change f1 moderated
         @2 change f1 transcoded
         @10 tick",
        expect![[r#"
            #1  @0      put a window=10
            #2  @0      change f1 rated
                         f1#a: coalescing d2 due=10
            #3  @1      change f1 moderated
                         f1#a: coalescing d2 due=10
            #4  @2      change f1 transcoded
                         f1#a: coalescing d2 due=10
            #5  @10     tick                         => start f1#a d2#1 v4 @10
                         f1#a: pending d2#1 v4
        "#]],
    );
}

#[test]
fn rule_2_filtered_change_updates_the_snapshot_but_starts_nothing() {
    check(
        "put a window=10 events=moderated
         @0 change f1 rated
         @20 tick
         @21 change f1 moderated
         @22 change f1 rated
         @31 tick",
        expect![[r#"
            #1  @0      put a window=10 events=moderated
            #2  @0      change f1 rated
            #3  @20     tick
            #4  @21     change f1 moderated
                         f1#a: coalescing d4 due=31
            #5  @22     change f1 rated
                         f1#a: coalescing d4 due=31
            #6  @31     tick                         => start f1#a d4#1 v5 @31
                         f1#a: pending d4#1 v5
        "#]],
    );
}

#[test]
fn rule_3_deadline_fires_before_a_record_at_the_same_time() {
    // The deadline at 10 fires as of 10, before the change stamped 10 is applied: the attempt
    // carries v2, and the change at 10 is owed and delivered a window later.
    check(
        "put a window=10
         @0 change f1 rated
         @10 change f1 moderated
         @10.5 ok f1 a
         @20 tick",
        expect![[r#"
            #1  @0      put a window=10
            #2  @0      change f1 rated
                         f1#a: coalescing d2 due=10
            #3  @10     change f1 moderated          => start f1#a d2#1 v2 @10
                         f1#a: pending d2#1 v2
            #4  @10.500 ok f1 a
                         f1#a: coalescing d3 due=20
            #5  @20     tick                         => start f1#a d3#1 v3 @20
                         f1#a: pending d3#1 v3
        "#]],
    );
}

#[test]
fn rule_4_success_with_newer_version_recoalesces() {
    check(
        "put a window=10
         @0 change f1 rated
         @10 tick
         @11 change f1 moderated
         @12 change f1 rated
         @13 ok f1 a
         @20 tick
         @21 tick
         @21.1 ok f1 a",
        expect![[r#"
            #1  @0      put a window=10
            #2  @0      change f1 rated
                         f1#a: coalescing d2 due=10
            #3  @10     tick                         => start f1#a d2#1 v2 @10
                         f1#a: pending d2#1 v2
            #4  @11     change f1 moderated
                         f1#a: pending d2#1 v2
            #5  @12     change f1 rated
                         f1#a: pending d2#1 v2
            #6  @13     ok f1 a
                         f1#a: coalescing d4 due=21
            #7  @20     tick
                         f1#a: coalescing d4 due=21
            #8  @21     tick                         => start f1#a d4#1 v5 @21
                         f1#a: pending d4#1 v5
            #9  @21.100 ok f1 a
                         f1#a: sent d4 v5
        "#]],
    );
}

#[test]
fn rule_4_failures_back_off_then_abandon_after_retry_for() {
    check(
        "put a window=0 backoff=10,60 retry_for=100
         @0 change f1 rated
         @0 tick
         @1 fail f1 a 503
         @13 tick
         @13 timeout f1 a
         @90 tick
         @90 fail f1 a 302
         @165 tick
         @165 fail f1 a 500
         @200 tick",
        expect![[r#"
            #1  @0      put a window=0 backoff=10,60 retry_for=100
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      fail f1 a 503
                         f1#a: retrying d2 failed=1 next=10.630
            #5  @13     tick                         => start f1#a d2#2 v2 @10.630
                         f1#a: pending d2#2 v2
            #6  @13     timeout f1 a
                         f1#a: retrying d2 failed=2 next=78.760
            #7  @90     tick                         => start f1#a d2#3 v2 @78.760
                         f1#a: pending d2#3 v2
            #8  @90     fail f1 a 302
                         f1#a: retrying d2 failed=3 next=160.980
            #9  @165    tick                         => start f1#a d2#4 v2 @160.980
                         f1#a: pending d2#4 v2
            #10 @165    fail f1 a 500
                         f1#a: abandoned d2 attempts=4
            #11 @200    tick
                         f1#a: abandoned d2 attempts=4
        "#]],
    );
}

#[test]
fn rule_4_retry_after_pushes_later_and_is_capped() {
    // Backoff 10 s (±20 %): Retry-After 15 on a 503 moves the retry to 15 s; 3600 on a 429 is
    // capped at twice the scheduled delay; Retry-After on a 500 is not a thing.
    check(
        "put a window=0 backoff=10
         @0 change f1 rated
         @0 tick
         @0 fail f1 a 503 retry_after=15
         @15 tick
         @15 fail f1 a 429 retry_after=3600
         @50 tick
         @50 fail f1 a 500 retry_after=3600",
        expect![[r#"
            #1  @0      put a window=0 backoff=10
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @0      fail f1 a 503 retry_after=15
                         f1#a: retrying d2 failed=1 next=15
            #5  @15     tick                         => start f1#a d2#2 v2 @15
                         f1#a: pending d2#2 v2
            #6  @15     fail f1 a 429 retry_after=3600
                         f1#a: retrying d2 failed=2 next=36.920
            #7  @50     tick                         => start f1#a d2#3 v2 @36.920
                         f1#a: pending d2#3 v2
            #8  @50     fail f1 a 500 retry_after=3600
                         f1#a: retrying d2 failed=3 next=61.830
        "#]],
    );
}

#[test]
fn rule_4_gone_disables_the_callback_for_every_file_until_put_again() {
    check(
        "put a window=0
         put b window=0
         @0 change f1 rated
         @0 change f2 rated
         @0 tick
         @1 gone f1 a
         @1 disable f1 a
         @1 stale f2 a d4 1 v4
         @2 change f2 rated
         @3 redeliver f2 a
         @4 put a window=0
         @5 change f2 rated
         @5 tick",
        expect![[r#"
            #1  @0      put a window=0
            #2  @0      put b window=0
            #3  @0      change f1 rated              => start f1#a d3#1 v3 @0 => start f1#b d3#1 v3 @0
                         f1#a: pending d3#1 v3 | f1#b: pending d3#1 v3
            #4  @0      change f2 rated              => start f2#a d4#1 v4 @0 => start f2#b d4#1 v4 @0
                         f1#a: pending d3#1 v3 | f1#b: pending d3#1 v3 | f2#a: pending d4#1 v4 | f2#b: pending d4#1 v4
            #5  @0      tick
                         f1#a: pending d3#1 v3 | f1#b: pending d3#1 v3 | f2#a: pending d4#1 v4 | f2#b: pending d4#1 v4
            #6  @1      gone f1 a                    => disable f1#a (cause 6)
                         f1#a: abandoned d3 attempts=1 | f1#b: pending d3#1 v3 | f2#a: pending d4#1 v4 | f2#b: pending d4#1 v4
            #7  @1      disable f1 a
                         f1#b: pending d3#1 v3 | f2#b: pending d4#1 v4
            #8  @1      stale f2 a d4 1 v4           ignored:StaleOutcome
                         f1#b: pending d3#1 v3 | f2#b: pending d4#1 v4
            #9  @2      change f2 rated
                         f1#b: pending d3#1 v3 | f2#b: pending d4#1 v4
            #10 @3      redeliver f2 a               ignored:DisabledCallback
                         f1#b: pending d3#1 v3 | f2#b: pending d4#1 v4
            #11 @4      put a window=0
                         f1#b: pending d3#1 v3 | f2#b: pending d4#1 v4
            #12 @5      change f2 rated              => start f2#a d12#1 v12 @5
                         f1#b: pending d3#1 v3 | f2#a: pending d12#1 v12 | f2#b: pending d4#1 v4
            #13 @5      tick
                         f1#b: pending d3#1 v3 | f2#a: pending d12#1 v12 | f2#b: pending d4#1 v4
        "#]],
    );
}

#[test]
fn rule_5_retry_carries_the_latest_snapshot() {
    check(
        "put a window=0 backoff=10
         @0 change f1 rated
         @0 tick
         @1 change f1 moderated
         @2 fail f1 a 500
         @3 change f1 transcoded
         @12 tick
         @13 ok f1 a",
        expect![[r#"
            #1  @0      put a window=0 backoff=10
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      change f1 moderated
                         f1#a: pending d2#1 v2
            #5  @2      fail f1 a 500
                         f1#a: retrying d2 failed=1 next=11.630
            #6  @3      change f1 transcoded
                         f1#a: retrying d2 failed=1 next=11.630
            #7  @12     tick                         => start f1#a d2#2 v6 @11.630
                         f1#a: pending d2#2 v6
            #8  @13     ok f1 a
                         f1#a: sent d2 v6
        "#]],
    );
}

#[test]
fn rule_6_redeliver_moves_any_state_but_pending_to_pending() {
    check(
        "put a window=10
         @0 change f1 rated
         @1 redeliver f1
         @2 redeliver f1 a
         @3 ok f1 a
         @4 redeliver f1
         @4.5 ok f1 a
         @5 redeliver f1 nope",
        expect![[r#"
            #1  @0      put a window=10
            #2  @0      change f1 rated
                         f1#a: coalescing d2 due=10
            #3  @1      redeliver f1                 => start f1#a d3#1 v2 @1 redeliver
                         f1#a: pending d3#1 v2 redeliver
            #4  @2      redeliver f1 a               ignored:AlreadyInFlight
                         f1#a: pending d3#1 v2 redeliver
            #5  @3      ok f1 a
                         f1#a: sent d3 v2
            #6  @4      redeliver f1                 => start f1#a d6#1 v2 @4 redeliver
                         f1#a: pending d6#1 v2 redeliver
            #7  @4.500  ok f1 a
                         f1#a: sent d6 v2
            #8  @5      redeliver f1 nope            ignored:UnknownCallback
                         f1#a: sent d6 v2
        "#]],
    );
}

#[test]
fn rule_6_redeliver_of_a_forgotten_file_without_a_version_does_nothing() {
    check(
        "put a window=1
         @0 redeliver f1",
        expect![[r#"
            #1  @0      put a window=1
            #2  @0      redeliver f1                 ignored:NothingToRedeliver
        "#]],
    );
}

#[test]
fn rule_7_config_changes_apply_from_their_position() {
    // Shrinking the window while a change waits moves its due time; the events filter in
    // force at each change decides whether it triggers; removing a callback stops its
    // machines and makes its late outcomes stale.
    check(
        "put a window=60
         @0 change f1 rated
         @5 put a window=10 events=moderated
         @10 tick
         @11 change f1 rated
         @12 change f2 moderated
         @13 rm a
         @13 stale f1 a d2 1 v2
         @30 change f2 moderated",
        expect![[r#"
            #1  @0      put a window=60
            #2  @0      change f1 rated
                         f1#a: coalescing d2 due=60
            #3  @5      put a window=10 events=moderated
                         f1#a: coalescing d2 due=10
            #4  @10     tick                         => start f1#a d2#1 v2 @10
                         f1#a: pending d2#1 v2
            #5  @11     change f1 rated
                         f1#a: pending d2#1 v2
            #6  @12     change f2 moderated
                         f1#a: pending d2#1 v2 | f2#a: coalescing d6 due=22
            #7  @13     rm a
            #8  @13     stale f1 a d2 1 v2           ignored:StaleOutcome
            #9  @30     change f2 moderated
        "#]],
    );
}

#[test]
fn sent_machines_are_forgotten_once_their_window_has_elapsed() {
    check(
        "put a window=10
         @0 change f1 rated
         @10 tick
         @11 ok f1 a
         @19.999 tick
         @20 tick",
        expect![[r#"
            #1  @0      put a window=10
            #2  @0      change f1 rated
                         f1#a: coalescing d2 due=10
            #3  @10     tick                         => start f1#a d2#1 v2 @10
                         f1#a: pending d2#1 v2
            #4  @11     ok f1 a
                         f1#a: sent d2 v2
            #5  @19.999 tick
                         f1#a: sent d2 v2
            #6  @20     tick
        "#]],
    );
}

#[test]
fn outcomes_that_do_not_match_the_attempt_in_flight_are_ignored() {
    check(
        "put a window=0
         @0 change f1 rated
         @0 tick
         @1 stale f1 a d2 2 v2
         @1 stale f1 a d9 1 v2
         @1 ok f1 a
         @2 stale f1 a d2 1 v2",
        expect![[r#"
            #1  @0      put a window=0
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      stale f1 a d2 2 v2           ignored:StaleOutcome
                         f1#a: pending d2#1 v2
            #5  @1      stale f1 a d9 1 v2           ignored:StaleOutcome
                         f1#a: pending d2#1 v2
            #6  @1      ok f1 a
                         f1#a: sent d2 v2
            #7  @2      stale f1 a d2 1 v2           ignored:StaleOutcome
        "#]],
    );
}

mod per_file_callbacks {
    //! LightFlow's per-file callbacks: given with a change, applying to that file only, with
    //! `on_success` / `on_failure` / `on_progress` choosing which events trigger them.

    use std::sync::Arc;

    use cb_core::{
        CallbackRef, CallbackSpec, Effect, EventKind, FileCallback, MachineKey, RecordKind,
    };

    use super::support::{file, Sim};

    fn lightflow(on_progress: bool) -> Arc<[FileCallback]> {
        let spec: CallbackSpec = serde_json::from_str(&format!(
            r#"{{"url":"https://callback.epiclabs/ingest","method":"PUT","format":"json",
                "window_secs":0,"onProgressEncoding":{on_progress}}}"#
        ))
        .unwrap();
        FileCallback::validate_list(vec![spec]).unwrap().into()
    }

    fn change(sim: &mut Sim, at: u64, f: &str, event: EventKind, cbs: Option<Arc<[FileCallback]>>) {
        let _ = sim.push(
            at,
            RecordKind::ChangeAppended {
                file: file(f),
                event,
                callbacks: cbs,
            },
        );
    }

    fn started(sim: &Sim) -> Vec<String> {
        sim.effects
            .iter()
            .flatten()
            .filter_map(|e| match e {
                Effect::StartAttempt(a) => Some(format!("{} v{}", a.machine, a.version)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn apply_to_their_file_only_and_follow_the_on_switches() {
        let mut sim = Sim::default();
        change(
            &mut sim,
            0,
            "f1",
            EventKind::EncodingProgress,
            Some(lightflow(false)),
        );
        change(&mut sim, 0, "f2", EventKind::Published, None);
        let _ = sim.push(0, RecordKind::Ticked);
        // on_progress is false by default: encoding_progress started nothing; f2 has no callback.
        assert!(started(&sim).is_empty(), "{:?}", started(&sim));
        change(&mut sim, 1000, "f1", EventKind::Published, None);
        let _ = sim.push(1000, RecordKind::Ticked);
        assert_eq!(started(&sim), vec!["p/f1#file:0 v4"]);
        let key = MachineKey {
            file: file("f1"),
            callback: CallbackRef::File("0".parse().unwrap()),
        };
        assert!(sim.core.machine(&key).unwrap().in_flight().is_some());
        assert!(
            sim.core.file(&file("f2")).is_none(),
            "f2 is not kept at all"
        );
    }

    #[test]
    fn a_change_with_an_empty_list_removes_them_and_on_progress_opts_in() {
        let mut sim = Sim::default();
        change(
            &mut sim,
            0,
            "f1",
            EventKind::EncodingProgress,
            Some(lightflow(true)),
        );
        let _ = sim.push(0, RecordKind::Ticked);
        assert_eq!(started(&sim), vec!["p/f1#file:0 v1"]);
        change(
            &mut sim,
            10,
            "f1",
            EventKind::Failed,
            Some(Arc::from(Vec::new())),
        );
        let _ = sim.push(20_000, RecordKind::Ticked);
        assert_eq!(started(&sim).len(), 1, "removed callbacks start nothing");
        assert!(
            sim.core.file(&file("f1")).is_none(),
            "and the file is forgotten"
        );
    }
}

#[test]
fn rule_4_a_put_after_a_410_wins_over_the_late_disable() {
    check(
        "put a window=0
         @0 change f1 rated
         @0 tick
         @1 gone f1 a
         @2 put a window=0
         @3 disable f1 a 4
         @4 change f1 rated
         @4 tick",
        expect![[r#"
            #1  @0      put a window=0
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      gone f1 a                    => disable f1#a (cause 4)
                         f1#a: abandoned d2 attempts=1
            #5  @2      put a window=0
                         f1#a: abandoned d2 attempts=1
            #6  @3      disable f1 a 4               ignored:SupersededDisable
                         f1#a: abandoned d2 attempts=1
            #7  @4      change f1 rated              => start f1#a d7#1 v7 @4
                         f1#a: pending d7#1 v7
            #8  @4      tick
                         f1#a: pending d7#1 v7
        "#]],
    );
}

#[test]
fn rule_4_a_change_owed_when_a_delivery_is_abandoned_reopens_the_machine() {
    check(
        "put a window=0 retry_for=0
         @0 change f1 rated
         @0 tick
         @1 change f1 moderated
         @2 fail f1 a 500
         @2 tick",
        expect![[r#"
            #1  @0      put a window=0 retry_for=0
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      change f1 moderated
                         f1#a: pending d2#1 v2
            #5  @2      fail f1 a 500                => start f1#a d4#1 v4 @2
                         f1#a: pending d4#1 v4
            #6  @2      tick
                         f1#a: pending d4#1 v4
        "#]],
    );
}

#[test]
fn rule_4_an_owed_disable_survives_a_checkpoint_until_its_record_lands() {
    use cb_core::{Core, Effect, RecordKind};
    let mut sim = support::Sim::default();
    for line in ["put a window=0", "change f1 rated", "tick"] {
        let _ = line;
    }
    let callback = std::sync::Arc::new(
        cb_core::Callback::from_json(r#"{"url":"http://example.org/","window_secs":0}"#).unwrap(),
    );
    let _ = sim.push(
        0,
        RecordKind::CallbackPut {
            project: support::project(),
            name: support::name("a"),
            callback,
        },
    );
    let _ = sim.push(
        0,
        RecordKind::ChangeAppended {
            file: support::file("f1"),
            event: cb_core::EventKind::Rated,
            callbacks: None,
        },
    );
    let _ = sim.push(0, RecordKind::Ticked);
    let key = support::machine("f1", "a");
    let report = sim
        .report_for(
            &key,
            cb_core::Outcome::Status {
                status: 410,
                retry_after_secs: None,
            },
        )
        .unwrap();
    let _ = sim.push(1, RecordKind::AttemptFinished(report));
    // The driver crashes here, before appending CallbackDisabled; it restarts from a checkpoint.
    let restored = Core::from_checkpoint(sim.core.checkpoint());
    let owed = restored.owed_disables();
    assert!(
        matches!(&owed[..], [Effect::DisableCallback { machine, cause }] if machine == &key && cause.0 == 4),
        "{owed:?}"
    );
    let _ = sim.push(
        2,
        RecordKind::CallbackDisabled {
            machine: key,
            cause: cb_core::Seq(4),
        },
    );
    assert!(sim.core.owed_disables().is_empty());
    assert!(sim
        .core
        .callbacks(&support::project())
        .all(|(_, s)| s.disabled_by.is_some()));
}

/// A `sent` machine is forgotten once its window has passed, but the core's clock moves
/// only with the log: `census_at` counts as of a later time, as status and metrics do
/// between records, and agrees with what the next record makes of it.
#[test]
fn census_at_leaves_out_sent_machines_past_their_window() {
    let mut sim = support::sim(
        "put a window=10
         @3 change f1 rated
         @13 tick
         @13.2 ok f1 a",
    );
    let sent = cb_core::StateName::ALL
        .iter()
        .position(|s| *s == cb_core::StateName::Sent)
        .unwrap();
    let at = |s: f64| cb_core::Timestamp((s * 1000.0) as u64);
    assert_eq!(
        (sim.core.census().files, sim.core.census().states[sent]),
        (1, 1)
    );
    let within = sim.core.census_at(at(20.0));
    assert_eq!(
        (within.files, within.states[sent]),
        (1, 1),
        "window open until 23.2"
    );
    let past = sim.core.census_at(at(30.0));
    assert_eq!((past.files, past.states[sent]), (0, 0));
    assert_eq!(sim.core.census(), sim.core.census_at(sim.core.now()));
    // The next record drops it: the core then holds what census_at said.
    sim.push(30_000, cb_core::RecordKind::Ticked);
    assert_eq!(sim.core.census(), past);
}

#[test]
fn rule_8_a_pause_holds_attempts_back_and_the_resume_sends_the_latest_once() {
    check(
        "put a window=10
         @0 pause a
         @1 change f1 rated
         @5 change f1 moderated
         @11 tick
         @20 change f1 rated
         @30 tick
         @40 resume a
         @40.1 ok f1 a",
        expect![[r#"
            #1  @0      put a window=10
            #2  @0      pause a
            #3  @1      change f1 rated
                         f1#a: coalescing d3 due=11
            #4  @5      change f1 moderated
                         f1#a: coalescing d3 due=11
            #5  @11     tick
                         f1#a: coalescing d3 due=11
            #6  @20     change f1 rated
                         f1#a: coalescing d3 due=11
            #7  @30     tick
                         f1#a: coalescing d3 due=11
            #8  @40     resume a                     => start f1#a d3#1 v6 @40
                         f1#a: pending d3#1 v6
            #9  @40.100 ok f1 a
                         f1#a: sent d3 v6
        "#]],
    );
}

#[test]
fn rule_8_an_attempt_in_flight_completes_and_a_redeliver_is_refused() {
    check(
        "put a window=0 backoff=10
         @0 change f1 rated
         @0 tick
         @1 pause a
         @2 fail f1 a 500
         @3 redeliver f1 a
         @20 tick
         @21 resume a",
        expect![[r#"
            #1  @0      put a window=0 backoff=10
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      pause a
                         f1#a: pending d2#1 v2
            #5  @2      fail f1 a 500
                         f1#a: retrying d2 failed=1 next=11.630
            #6  @3      redeliver f1 a               ignored:PausedCallback
                         f1#a: retrying d2 failed=1 next=11.630
            #7  @20     tick
                         f1#a: retrying d2 failed=1 next=11.630
            #8  @21     resume a                     => start f1#a d2#2 v2 @21
                         f1#a: pending d2#2 v2
        "#]],
    );
}

#[test]
fn rule_8_a_pause_past_the_retry_horizon_abandons_what_kept_failing() {
    check(
        "put a window=0 backoff=10 retry_for=30
         @0 change f1 rated
         @0 tick
         @1 fail f1 a 500
         @5 pause a
         @12 tick
         @40 tick
         @50 resume a",
        expect![[r#"
            #1  @0      put a window=0 backoff=10 retry_for=30
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      fail f1 a 500
                         f1#a: retrying d2 failed=1 next=10.630
            #5  @5      pause a
                         f1#a: retrying d2 failed=1 next=10.630
            #6  @12     tick
                         f1#a: retrying d2 failed=1 next=10.630
            #7  @40     tick
                         f1#a: retrying d2 failed=1 next=10.630
            #8  @50     resume a
                         f1#a: abandoned d2 attempts=1
        "#]],
    );
}

#[test]
fn rule_8_a_change_during_a_paused_retry_is_still_delivered_past_the_horizon() {
    check(
        "put a window=0 backoff=10 retry_for=30
         @0 change f1 rated
         @0 tick
         @1 fail f1 a 500
         @5 pause a
         @12 tick
         @20 change f1 moderated
         @50 resume a",
        expect![[r#"
            #1  @0      put a window=0 backoff=10 retry_for=30
            #2  @0      change f1 rated              => start f1#a d2#1 v2 @0
                         f1#a: pending d2#1 v2
            #3  @0      tick
                         f1#a: pending d2#1 v2
            #4  @1      fail f1 a 500
                         f1#a: retrying d2 failed=1 next=10.630
            #5  @5      pause a
                         f1#a: retrying d2 failed=1 next=10.630
            #6  @12     tick
                         f1#a: retrying d2 failed=1 next=10.630
            #7  @20     change f1 moderated
                         f1#a: retrying d2 failed=1 next=10.630
            #8  @50     resume a                     => start f1#a d7#1 v7 @50
                         f1#a: pending d7#1 v7
        "#]],
    );
}
