//! Bounds on attempts in flight: globally and per origin, with first attempts and retries
//! counted apart.
//!
//! SPEC §6 "Isolation": a slow, failing or dead receiver must never delay deliveries to
//! others. A per-origin bound keeps one receiver from taking every slot; separate pools for
//! first attempts and retries keep a backlog of retries (which are, by nature, to receivers
//! that are failing) from standing in front of fresh deliveries. Waiting is FIFO within a
//! pool (tokio's semaphore is fair), and the origin's permit is taken before the global one,
//! so an attempt queued behind its own dead origin holds no global slot while it waits.
//!
//! An origin whose last [`FAILING_AFTER`] attempts each failed to get an answer (timeout,
//! connection or TLS failure: the failures that hold a slot for long) is *failing*: its
//! attempts go through a single probe slot until one gets an answer. An origin that has not
//! answered yet (new, or pruned while idle) is *starting*: it has [`STARTING_SLOTS`] until
//! its first answer. Without both, a few dozen dead customer sites, each holding its full
//! per-origin share for `timeout_secs`, would take every global slot and healthy receivers
//! would wait (80 dead origins delayed a healthy project by 12 s before `starting` existed).
//!
//! An attempt waiting for a slot picks its semaphore again whenever its origin's health
//! changes ([`Origin::health`]): attempts queued on a failing origin's probe slot move back
//! to the full share as soon as one answer comes (before, they stayed queued one at a time,
//! and a receiver with a few slow answers served its backlog serially for a minute).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How many attempts may be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// First attempts in flight, all origins together (retries get a quarter of this more).
    pub global: usize,
    /// First attempts in flight to one origin (retries get half of this more).
    pub per_origin: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            global: 1024,
            per_origin: 16,
        }
    }
}

/// Which pool an attempt draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// The first attempt of a delivery (redeliveries included).
    First,
    /// A retry after a failure.
    Retry,
}

/// Consecutive answerless failures after which an origin is probed one attempt at a time.
pub const FAILING_AFTER: u32 = 3;

/// First attempts in flight to an origin that has not answered yet (retries get one).
pub const STARTING_SLOTS: usize = 2;

struct Pair {
    first: Arc<Semaphore>,
    retry: Arc<Semaphore>,
}

impl Pair {
    fn new(first: usize, retry: usize) -> Pair {
        Pair {
            first: Arc::new(Semaphore::new(first.max(1))),
            retry: Arc::new(Semaphore::new(retry.max(1))),
        }
    }

    fn get(&self, pool: Pool) -> Arc<Semaphore> {
        match pool {
            Pool::First => self.first.clone(),
            Pool::Retry => self.retry.clone(),
        }
    }
}

/// One origin's slots and health.
struct Origin {
    pools: Pair,
    /// The few slots of an origin that has not answered yet.
    starting: Pair,
    /// The single slot of a failing origin.
    probe: Arc<Semaphore>,
    /// Consecutive attempts that got no answer.
    failures: AtomicU32,
    /// Whether any attempt got an answer.
    answered: AtomicBool,
    /// Woken when the origin starts or stops failing, or first answers: waiters pick their
    /// semaphore again.
    health: Notify,
}

impl Origin {
    fn is_idle(self: &Arc<Self>) -> bool {
        // Nobody waits (the table's Arc is the only one) and nobody holds a permit.
        Arc::strong_count(self) == 1
            && Arc::strong_count(&self.pools.first) == 1
            && Arc::strong_count(&self.pools.retry) == 1
            && Arc::strong_count(&self.starting.first) == 1
            && Arc::strong_count(&self.starting.retry) == 1
            && Arc::strong_count(&self.probe) == 1
    }

    /// The narrower gate an attempt in `pool` passes first, given the origin's health now:
    /// the probe slot of a failing origin, the starting share of one that has not answered.
    /// A gate is taken on top of a pool slot, never instead of one, so the per-origin bound
    /// holds while attempts that passed a gate finish after the origin's health changed.
    fn gate(&self, pool: Pool) -> Option<Arc<Semaphore>> {
        if self.failures.load(Ordering::Relaxed) >= FAILING_AFTER {
            Some(self.probe.clone())
        } else if !self.answered.load(Ordering::Relaxed) {
            Some(self.starting.get(pool))
        } else {
            None
        }
    }
}

/// The semaphores; cheap to share.
pub struct Limits {
    config: LimitsConfig,
    global: Pair,
    origins: Mutex<OriginTable>,
    /// Attempts waiting for a slot (`cb_attempts_waiting`): started by the core, not yet on
    /// the wire. A backlog here is delay no deadline shows.
    waiting: Gauge,
}

/// Counts one attempt in [`Limits::waiting`] while it lives (a cancelled wait included).
struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct OriginTable {
    map: HashMap<String, Arc<Origin>>,
    /// Prune idle origins when the table grows past this (then doubled: amortized O(1)).
    prune_at: usize,
}

/// Held while an attempt is in flight; dropping it frees the slots (and the gate it passed).
pub struct Slot {
    origin: Arc<Origin>,
    _gate: Option<OwnedSemaphorePermit>,
    _origin_permit: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Slot {
    /// Records how the attempt went: `unanswered` for a timeout or a connection or TLS
    /// failure, which count towards marking the origin failing; anything else clears it.
    pub fn settle(&self, unanswered: bool) {
        let origin = &self.origin;
        let changed = if unanswered {
            origin.failures.fetch_add(1, Ordering::Relaxed) + 1 == FAILING_AFTER
        } else {
            let was_failing = origin.failures.swap(0, Ordering::Relaxed) >= FAILING_AFTER;
            let first_answer = !origin.answered.swap(true, Ordering::Relaxed);
            was_failing || first_answer
        };
        if changed {
            origin.health.notify_waiters();
        }
    }
}

impl Limits {
    /// New bounds; `waiting` counts the attempts waiting for a slot.
    pub fn new(config: LimitsConfig, waiting: Gauge) -> Limits {
        Limits {
            config,
            global: Pair::new(config.global, config.global / 4),
            origins: Mutex::new(OriginTable {
                map: HashMap::new(),
                prune_at: 1024,
            }),
            waiting,
        }
    }

    /// Waits for a slot to `origin` in `pool` (or the origin's probe slot, if it is failing).
    pub async fn acquire(&self, origin: &str, pool: Pool) -> Slot {
        self.waiting.inc();
        let _waiting = Waiting(&self.waiting);
        let entry = {
            let mut table = self.origins.lock().expect("origin table");
            if table.map.len() >= table.prune_at {
                table.map.retain(|_, o| !o.is_idle());
                table.prune_at = (table.map.len() * 2).max(1024);
            }
            table
                .map
                .entry(origin.to_owned())
                .or_insert_with(|| {
                    Arc::new(Origin {
                        pools: Pair::new(self.config.per_origin, self.config.per_origin / 2),
                        starting: Pair::new(STARTING_SLOTS.min(self.config.per_origin), 1),
                        probe: Arc::new(Semaphore::new(1)),
                        failures: AtomicU32::new(0),
                        answered: AtomicBool::new(false),
                        health: Notify::new(),
                    })
                })
                .clone()
        };
        let (gate_permit, origin_permit) = loop {
            // Registered before the health is read, so a change in between is not missed.
            let changed = entry.health.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let gate = entry.gate(pool);
            let slots = entry.pools.get(pool);
            let both = async move {
                let gate = match gate {
                    Some(g) => Some(g.acquire_owned().await),
                    None => None,
                };
                (gate, slots.acquire_owned().await)
            };
            tokio::select! {
                (gate, slot) = both => {
                    let closed = "semaphores are never closed";
                    break (gate.map(|g| g.expect(closed)), slot.expect(closed));
                }
                () = &mut changed => {}
            }
        };
        let global_permit = self
            .global
            .get(pool)
            .acquire_owned()
            .await
            .expect("semaphores are never closed");
        Slot {
            origin: entry,
            _gate: gate_permit,
            _origin_permit: origin_permit,
            _global: global_permit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(global: usize, per_origin: usize) -> Arc<Limits> {
        let config = LimitsConfig { global, per_origin };
        Arc::new(Limits::new(config, Gauge::default()))
    }

    /// Marks `origin` as one that answers, then as failing (its probe slot only).
    async fn failing(limits: &Limits, origin: &str) {
        answered(limits, origin).await;
        for _ in 0..FAILING_AFTER {
            limits.acquire(origin, Pool::First).await.settle(true);
        }
    }

    /// Marks `origin` as one that answers (past its starting share).
    async fn answered(limits: &Limits, origin: &str) {
        limits.acquire(origin, Pool::First).await.settle(false);
    }

    async fn waits(limits: &Limits, origin: &str, pool: Pool) -> bool {
        tokio::time::timeout(Duration::from_millis(50), limits.acquire(origin, pool))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_full_origin_does_not_block_another() {
        let limits = limits(8, 2);
        answered(&limits, "http://dead").await;
        let _a = limits.acquire("http://dead", Pool::First).await;
        let _b = limits.acquire("http://dead", Pool::First).await;
        let blocked = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://dead", Pool::First),
        )
        .await;
        assert!(blocked.is_err(), "third slot to one origin must wait");
        let other = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://alive", Pool::First),
        )
        .await;
        assert!(other.is_ok());
    }

    #[tokio::test]
    async fn retries_do_not_take_first_attempt_slots() {
        let limits = limits(8, 4);
        answered(&limits, "http://x").await;
        let _r1 = limits.acquire("http://x", Pool::Retry).await;
        let _r2 = limits.acquire("http://x", Pool::Retry).await;
        let third_retry = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://x", Pool::Retry),
        )
        .await;
        assert!(third_retry.is_err());
        let first = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://x", Pool::First),
        )
        .await;
        assert!(first.is_ok(), "first attempts have their own pool");
    }

    #[tokio::test]
    async fn a_failing_origin_gets_one_probe_slot_until_it_answers() {
        let limits = limits(64, 8);
        failing(&limits, "http://dead").await;
        let probe = limits.acquire("http://dead", Pool::First).await;
        let second = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://dead", Pool::First),
        )
        .await;
        assert!(second.is_err(), "a failing origin has one slot");
        probe.settle(false);
        drop(probe);
        let a = limits.acquire("http://dead", Pool::First).await;
        let b = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://dead", Pool::First),
        )
        .await;
        assert!(b.is_ok(), "an answer restores the full share");
        drop(a);
    }

    /// Attempts queued on a failing origin's probe slot move to the full share as soon as
    /// one answer comes, without waiting for the probe to be released one by one.
    #[tokio::test]
    async fn waiters_on_the_probe_slot_move_back_when_the_origin_answers() {
        let limits = limits(64, 8);
        failing(&limits, "http://slow").await;
        let probe = limits.acquire("http://slow", Pool::First).await;
        let queued: Vec<_> = (0..4)
            .map(|_| {
                let limits = limits.clone();
                tokio::spawn(async move { limits.acquire("http://slow", Pool::First).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            queued.iter().all(|q| !q.is_finished()),
            "one probe at a time"
        );
        probe.settle(false);
        for q in queued {
            let slot = tokio::time::timeout(Duration::from_millis(200), q).await;
            assert!(slot.is_ok(), "a queued attempt moved to the full share");
        }
        drop(probe);
    }

    /// An origin that has not answered yet gets a few slots, so dead ones cannot take the
    /// global share between them; its first answer opens the full share to those waiting.
    #[tokio::test]
    async fn a_new_origin_starts_with_a_few_slots_until_it_answers() {
        let limits = limits(64, 8);
        let mut held = Vec::new();
        for _ in 0..STARTING_SLOTS {
            held.push(limits.acquire("http://new", Pool::First).await);
        }
        assert!(waits(&limits, "http://new", Pool::First).await);
        let retry = limits.acquire("http://new", Pool::Retry).await;
        assert!(waits(&limits, "http://new", Pool::Retry).await);
        let more = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.acquire("http://new", Pool::First).await })
        };
        held[0].settle(false);
        let more = tokio::time::timeout(Duration::from_millis(200), more).await;
        assert!(more.is_ok(), "the first answer opens the full share");
        for _ in 0..4 {
            assert!(!waits(&limits, "http://new", Pool::First).await);
        }
        drop((held, retry));
    }

    /// The per-origin bound holds across a change of health: attempts that passed the
    /// starting gate still count against the full share when the origin first answers.
    #[tokio::test]
    async fn the_per_origin_bound_holds_when_an_origin_first_answers() {
        let limits = limits(64, 4);
        let first = limits.acquire("http://o", Pool::First).await;
        let _second = limits.acquire("http://o", Pool::First).await;
        let queued: Vec<_> = (0..4)
            .map(|_| {
                let limits = limits.clone();
                tokio::spawn(async move { limits.acquire("http://o", Pool::First).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.settle(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let running = queued.iter().filter(|q| q.is_finished()).count();
        assert_eq!(
            running, 2,
            "4 slots, 2 of them still held by the starting attempts"
        );
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(queued.iter().filter(|q| q.is_finished()).count(), 3);
        for q in queued {
            q.abort();
        }
    }

    /// `cb_attempts_waiting` counts attempts without a slot, a cancelled wait not after it.
    #[tokio::test]
    async fn waiting_counts_attempts_without_a_slot() {
        let waiting = Gauge::default();
        let limits = Arc::new(Limits::new(
            LimitsConfig {
                global: 8,
                per_origin: 1,
            },
            waiting.clone(),
        ));
        let held = limits.acquire("http://x", Pool::First).await;
        assert_eq!(waiting.get(), 0);
        assert!(waits(&limits, "http://x", Pool::First).await);
        assert_eq!(waiting.get(), 0, "a cancelled wait is not counted");
        let waiter = {
            let limits = limits.clone();
            tokio::spawn(async move { drop(limits.acquire("http://x", Pool::First).await) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(waiting.get(), 1);
        drop(held);
        waiter.await.unwrap();
        assert_eq!(waiting.get(), 0);
    }

    #[tokio::test]
    async fn pruning_never_forgets_an_origin_with_attempts_in_flight() {
        let limits = limits(4096, 1);
        let held = limits.acquire("http://busy", Pool::First).await;
        for i in 0..3000 {
            drop(limits.acquire(&format!("http://o{i}"), Pool::First).await);
        }
        let again = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://busy", Pool::First),
        )
        .await;
        assert!(
            again.is_err(),
            "the busy origin's bound still holds after pruning"
        );
        drop(held);
    }
}
