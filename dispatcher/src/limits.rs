//! Bounds on attempts in flight, globally and per origin, with first attempts and retries
//! counted apart; and the per-origin ready queues where attempts wait for a slot.
//!
//! SPEC §6 "Isolation": a slow, failing or dead receiver must never delay deliveries to
//! others. A per-origin bound keeps one receiver from taking every slot; separate pools for
//! first attempts and retries keep a backlog of retries (which are, by nature, to receivers
//! that are failing) from standing in front of fresh deliveries. Waiting is FIFO within an
//! origin's pool, and an attempt takes its origin's slot before it queues for a global one,
//! so an attempt queued behind its own dead origin holds no global slot while it waits.
//!
//! This is plain data, driven by the driver state: an attempt waits here as its
//! [`Attempt`] (about 120 bytes: a million attempts queued on a dead receiver cost a
//! hundred-odd MB, not a task each), and becomes a task only once [`Limits::poll_admitted`]
//! hands it out with its [`Slot`]. [`Limits::finish`] gives the slot back with what the
//! attempt learnt of its origin, and admits whoever can go next.
//!
//! An origin's [`Health`]: *starting* until its first answer ([`STARTING_SLOTS`] slots),
//! *answering*, or *failing* after [`FAILING_AFTER`] consecutive attempts that got no
//! answer (timeout, connection or TLS failure: the failures that hold a slot for long), when
//! it is probed one attempt at a time until one gets an answer. Without both narrower gates,
//! a few dozen dead customer sites, each holding its full share for `timeout_secs`, would take
//! every global slot and healthy receivers would wait (80 dead origins delayed a healthy
//! project by 12 s before `starting` existed). A gate is taken on top of a pool slot, never
//! instead of one, so the per-origin bound holds across a change of health; and a change of
//! health re-examines the origin's queue at once (a failing origin that answers again serves
//! its backlog at full share, not one at a time).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cb_core::{Attempt, Target};

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

impl LimitsConfig {
    /// The most attempts that can be in flight at once, both pools together.
    pub fn most_in_flight(&self) -> usize {
        self.global_cap(Pool::First) + self.global_cap(Pool::Retry)
    }

    fn global_cap(&self, pool: Pool) -> usize {
        match pool {
            Pool::First => self.global.max(1),
            Pool::Retry => (self.global / 4).max(1),
        }
    }

    fn origin_cap(&self, pool: Pool) -> usize {
        match pool {
            Pool::First => self.per_origin.max(1),
            Pool::Retry => (self.per_origin / 2).max(1),
        }
    }

    fn starting_cap(&self, pool: Pool) -> usize {
        match pool {
            Pool::First => STARTING_SLOTS.min(self.per_origin).max(1),
            Pool::Retry => 1,
        }
    }
}

/// Which pool an attempt draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The first attempt of a delivery (redeliveries included).
    First,
    /// A retry after a failure.
    Retry,
}

impl Pool {
    /// The pool of `attempt`.
    pub fn of(attempt: &Attempt) -> Pool {
        if attempt.attempt <= 1 {
            Pool::First
        } else {
            Pool::Retry
        }
    }

    fn index(self) -> usize {
        match self {
            Pool::First => 0,
            Pool::Retry => 1,
        }
    }
}

/// Consecutive answerless failures after which an origin is probed one attempt at a time.
pub const FAILING_AFTER: u32 = 3;

/// First attempts in flight to an origin that has not answered yet (retries get one).
pub const STARTING_SLOTS: usize = 2;

/// Prune idle origins once the table holds this many (then twice what is left).
const PRUNE_AT: usize = 1024;

/// An origin's health, which decides the gate its attempts pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No attempt has got an answer yet: [`STARTING_SLOTS`] first attempts, one retry.
    Starting,
    /// It answers: its full share.
    Answering,
    /// Its last [`FAILING_AFTER`] attempts got no answer: one attempt at a time.
    Failing,
}

/// What an attempt learnt of its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The origin answered (any status).
    Answered,
    /// A timeout, connection or TLS failure.
    Unanswered,
    /// Nothing: the attempt was cancelled (a shutdown).
    Cancelled,
}

/// The gate an attempt passed besides its pool slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    None,
    Starting,
    Probe,
}

/// A slot held by an attempt in flight: given back with [`Limits::finish`].
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    origin: Arc<str>,
    pool: Pool,
    gate: Gate,
}

impl Slot {
    /// The origin (`scheme://host:port`, or `smtp:` for mail).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

#[derive(Debug)]
struct Origin {
    health: Health,
    /// Consecutive attempts that got no answer.
    failures: u32,
    /// Pool slots held, by pool (attempts waiting for a global slot included).
    held: [usize; 2],
    /// Starting-gate slots held, by pool.
    starting: [usize; 2],
    /// Whether the probe slot is held.
    probing: bool,
    /// Attempts waiting for a slot of this origin, by pool, oldest first.
    queue: [VecDeque<Attempt>; 2],
}

impl Origin {
    fn new() -> Origin {
        Origin {
            health: Health::Starting,
            failures: 0,
            held: [0; 2],
            starting: [0; 2],
            probing: false,
            queue: [VecDeque::new(), VecDeque::new()],
        }
    }

    fn is_idle(&self) -> bool {
        self.held == [0; 2] && self.queue.iter().all(VecDeque::is_empty)
    }

    /// Takes a pool slot and the gate health asks for, if both are free.
    fn take(&mut self, config: &LimitsConfig, pool: Pool) -> Option<Gate> {
        let i = pool.index();
        if self.held[i] >= config.origin_cap(pool) {
            return None;
        }
        let gate = match self.health {
            Health::Failing if self.probing => return None,
            Health::Failing => {
                self.probing = true;
                Gate::Probe
            }
            Health::Starting if self.starting[i] >= config.starting_cap(pool) => return None,
            Health::Starting => {
                self.starting[i] += 1;
                Gate::Starting
            }
            Health::Answering => Gate::None,
        };
        self.held[i] += 1;
        Some(gate)
    }

    fn give_back(&mut self, pool: Pool, gate: Gate) {
        let i = pool.index();
        self.held[i] -= 1;
        match gate {
            Gate::None => {}
            Gate::Starting => self.starting[i] -= 1,
            Gate::Probe => self.probing = false,
        }
    }
}

/// The slots and the queues. See the module docs.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    origins: HashMap<Arc<str>, Origin>,
    prune_at: usize,
    /// Global slots held, by pool.
    global: [usize; 2],
    /// Attempts holding their origin's slot, waiting for a global one, by pool.
    global_queue: [VecDeque<(Attempt, Slot)>; 2],
    /// Attempts that hold both slots, for [`Limits::poll_admitted`].
    admitted: VecDeque<(Attempt, Slot)>,
    /// Attempts queued (not admitted yet).
    waiting: usize,
    /// Attempts admitted and not finished.
    in_flight: usize,
}

impl Limits {
    /// No attempt yet.
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config,
            origins: HashMap::new(),
            prune_at: PRUNE_AT,
            global: [0; 2],
            global_queue: [VecDeque::new(), VecDeque::new()],
            admitted: VecDeque::new(),
            waiting: 0,
            in_flight: 0,
        }
    }

    /// Queues `attempt` behind its origin's earlier ones; it is admitted at once if a slot is
    /// free.
    pub fn submit(&mut self, attempt: Attempt) {
        let origin: Arc<str> = origin_of(&attempt.callback.target).into();
        if self.origins.len() >= self.prune_at && !self.origins.contains_key(&origin) {
            self.origins.retain(|_, o| !o.is_idle());
            self.prune_at = (self.origins.len() * 2).max(PRUNE_AT);
        }
        let pool = Pool::of(&attempt);
        self.origins
            .entry(origin.clone())
            .or_insert_with(Origin::new)
            .queue[pool.index()]
        .push_back(attempt);
        self.waiting += 1;
        self.pump_origin(&origin);
    }

    /// The next attempt that holds its slots: the caller performs it and then calls
    /// [`Limits::finish`] with the slot.
    pub fn poll_admitted(&mut self) -> Option<(Attempt, Slot)> {
        self.admitted.pop_front()
    }

    /// Gives `slot` back, with what its attempt learnt of the origin, and admits whoever can
    /// go now.
    pub fn finish(&mut self, slot: Slot, answer: Answer) {
        self.in_flight -= 1;
        self.global[slot.pool.index()] -= 1;
        if let Some(origin) = self.origins.get_mut(&slot.origin) {
            origin.give_back(slot.pool, slot.gate);
            match answer {
                Answer::Answered => {
                    origin.failures = 0;
                    origin.health = Health::Answering;
                }
                Answer::Unanswered => {
                    origin.failures = origin.failures.saturating_add(1);
                    if origin.failures >= FAILING_AFTER {
                        origin.health = Health::Failing;
                    }
                }
                Answer::Cancelled => {}
            }
        }
        self.pump_origin(&slot.origin);
        self.pump_global(slot.pool);
    }

    /// True if an attempt holds its slots and waits for [`Limits::poll_admitted`].
    pub fn has_admitted(&self) -> bool {
        !self.admitted.is_empty()
    }

    /// Drops every queued attempt, and those admitted but not handed out (a shutdown: they
    /// stay in flight in the log, and the next start performs them); returns how many.
    pub fn drop_queued(&mut self) -> usize {
        let mut dropped = 0;
        // Queued at their origin: no slot held.
        for origin in self.origins.values_mut() {
            for queue in &mut origin.queue {
                dropped += queue.len();
                queue.clear();
            }
        }
        self.waiting -= dropped;
        // Waiting for a global slot: their origin's is held.
        for pool in [Pool::First, Pool::Retry] {
            for (_, slot) in std::mem::take(&mut self.global_queue[pool.index()]) {
                dropped += 1;
                self.waiting -= 1;
                if let Some(origin) = self.origins.get_mut(&slot.origin) {
                    origin.give_back(slot.pool, slot.gate);
                }
            }
        }
        // Admitted and not handed out: both are held.
        for (_, slot) in std::mem::take(&mut self.admitted) {
            dropped += 1;
            self.in_flight -= 1;
            self.global[slot.pool.index()] -= 1;
            if let Some(origin) = self.origins.get_mut(&slot.origin) {
                origin.give_back(slot.pool, slot.gate);
            }
        }
        dropped
    }

    /// Attempts waiting for a slot: started by the core, not yet handed out.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Attempts handed out (or ready to be) and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// `origin`'s health (`Starting` for one never seen).
    pub fn health(&self, origin: &str) -> Health {
        self.origins
            .get(origin)
            .map_or(Health::Starting, |o| o.health)
    }

    /// Moves `origin`'s queued attempts that can take its slots to the global queue.
    fn pump_origin(&mut self, origin: &Arc<str>) {
        let Some(entry) = self.origins.get_mut(origin) else {
            return;
        };
        let mut moved = [false; 2];
        for pool in [Pool::First, Pool::Retry] {
            let i = pool.index();
            while !entry.queue[i].is_empty() {
                let Some(gate) = entry.take(&self.config, pool) else {
                    break;
                };
                let attempt = entry.queue[i].pop_front().expect("checked");
                let slot = Slot {
                    origin: origin.clone(),
                    pool,
                    gate,
                };
                self.global_queue[i].push_back((attempt, slot));
                moved[i] = true;
            }
        }
        for pool in [Pool::First, Pool::Retry] {
            if moved[pool.index()] {
                self.pump_global(pool);
            }
        }
    }

    fn pump_global(&mut self, pool: Pool) {
        let i = pool.index();
        while self.global[i] < self.config.global_cap(pool) {
            let Some(ready) = self.global_queue[i].pop_front() else {
                break;
            };
            self.global[i] += 1;
            self.waiting -= 1;
            self.in_flight += 1;
            self.admitted.push_back(ready);
        }
    }
}

/// `scheme://host:port` of an HTTP target; one origin for all mail.
pub fn origin_of(target: &Target) -> String {
    match target {
        Target::Http(url) => match cb_core::render::wire_url(url).parse::<hyper::Uri>() {
            Ok(uri) => format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("http"),
                uri.authority().map_or("", |a| a.as_str())
            )
            .to_ascii_lowercase(),
            Err(_) => url.clone(),
        },
        Target::Mail(_) => "smtp:".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cb_core::{
        Callback, CallbackName, CallbackRef, DeliveryId, FileId, FileKey, MachineKey, ProjectId,
        Seq, Timestamp,
    };

    fn attempt(origin: &str, file: u32, number: u32) -> Attempt {
        let callback =
            Callback::from_json(&format!(r#"{{"url":"{origin}/cb"}}"#)).expect("a callback");
        Attempt {
            machine: MachineKey {
                file: FileKey::new(
                    ProjectId::new("p").unwrap(),
                    FileId::new(&file.to_string()).unwrap(),
                ),
                callback: CallbackRef::Project(CallbackName::new("site").unwrap()),
            },
            delivery: DeliveryId(Seq(u64::from(file))),
            attempt: number,
            version: Seq(u64::from(file)),
            started_at: Timestamp(0),
            redeliver: false,
            callback: Arc::new(callback),
        }
    }

    fn limits(global: usize, per_origin: usize) -> Limits {
        Limits::new(LimitsConfig { global, per_origin })
    }

    fn admitted(limits: &mut Limits) -> Vec<(Attempt, Slot)> {
        std::iter::from_fn(|| limits.poll_admitted()).collect()
    }

    /// Runs one attempt to `origin` through and settles it with `answer`.
    fn settle(limits: &mut Limits, origin: &str, answer: Answer) {
        limits.submit(attempt(origin, 999_999, 1));
        let (_, slot) = admitted(limits).pop().expect("a free slot");
        limits.finish(slot, answer);
    }

    fn failing(limits: &mut Limits, origin: &str) {
        settle(limits, origin, Answer::Answered);
        for _ in 0..FAILING_AFTER {
            settle(limits, origin, Answer::Unanswered);
        }
        assert_eq!(limits.health(origin), Health::Failing);
    }

    #[test]
    fn a_full_origin_does_not_block_another() {
        let mut limits = limits(8, 2);
        settle(&mut limits, "http://dead", Answer::Answered);
        for f in 0..3 {
            limits.submit(attempt("http://dead", f, 1));
        }
        let slots = admitted(&mut limits);
        assert_eq!(slots.len(), 2, "a third slot to one origin must wait");
        assert_eq!(limits.waiting(), 1);
        limits.submit(attempt("http://alive", 7, 1));
        assert_eq!(admitted(&mut limits).len(), 1);
    }

    #[test]
    fn retries_do_not_take_first_attempt_slots() {
        let mut limits = limits(8, 4);
        settle(&mut limits, "http://x", Answer::Answered);
        for f in 0..3 {
            limits.submit(attempt("http://x", f, 2));
        }
        assert_eq!(admitted(&mut limits).len(), 2, "retries: half the share");
        limits.submit(attempt("http://x", 9, 1));
        assert_eq!(
            admitted(&mut limits).len(),
            1,
            "first attempts have their own pool"
        );
    }

    #[test]
    fn a_failing_origin_gets_one_probe_slot_until_it_answers() {
        let mut limits = limits(64, 8);
        failing(&mut limits, "http://dead");
        for f in 0..5 {
            limits.submit(attempt("http://dead", f, 1));
        }
        let mut slots = admitted(&mut limits);
        assert_eq!(slots.len(), 1, "a failing origin has one slot");
        let (_, probe) = slots.pop().unwrap();
        limits.finish(probe, Answer::Answered);
        assert_eq!(
            admitted(&mut limits).len(),
            4,
            "an answer opens the full share to every attempt queued behind the probe"
        );
    }

    #[test]
    fn a_new_origin_starts_with_a_few_slots_until_it_answers() {
        let mut limits = limits(64, 8);
        for f in 0..6 {
            limits.submit(attempt("http://new", f, 1));
        }
        let mut first = admitted(&mut limits);
        assert_eq!(first.len(), STARTING_SLOTS);
        limits.submit(attempt("http://new", 10, 2));
        limits.submit(attempt("http://new", 11, 2));
        assert_eq!(admitted(&mut limits).len(), 1, "one retry while starting");
        let (_, slot) = first.pop().unwrap();
        limits.finish(slot, Answer::Answered);
        let more = admitted(&mut limits);
        // 8 first-attempt slots, one still held by a starting attempt: the 4 waiting go,
        // and the retry waiting too.
        assert_eq!(more.len(), 5);
    }

    #[test]
    fn the_per_origin_bound_holds_when_an_origin_first_answers() {
        let mut limits = limits(64, 4);
        for f in 0..6 {
            limits.submit(attempt("http://o", f, 1));
        }
        let mut running = admitted(&mut limits);
        assert_eq!(running.len(), 2);
        let (_, slot) = running.pop().unwrap();
        limits.finish(slot, Answer::Answered);
        // 4 slots: 1 still held by a starting attempt, so 3 more, not 4.
        assert_eq!(admitted(&mut limits).len(), 3);
        assert_eq!(limits.waiting(), 1);
    }

    #[test]
    fn the_global_bound_holds_across_origins_and_queues_in_order() {
        let mut limits = limits(3, 8);
        for o in 0..3 {
            settle(&mut limits, &format!("http://o{o}"), Answer::Answered);
        }
        for f in 0..4 {
            limits.submit(attempt("http://o0", f, 1));
        }
        limits.submit(attempt("http://o1", 10, 1));
        let running = admitted(&mut limits);
        assert_eq!(running.len(), 3);
        assert_eq!(limits.waiting(), 2);
        let (_, slot) = running.into_iter().next().unwrap();
        limits.finish(slot, Answer::Answered);
        let next = admitted(&mut limits);
        assert_eq!(next.len(), 1);
        assert_eq!(
            next[0].0.machine.file.file_id.as_str(),
            "3",
            "global slots go in the order attempts got their origin's"
        );
    }

    #[test]
    fn dropping_the_queue_frees_the_origin_slots_it_held() {
        let mut limits = limits(1, 4);
        settle(&mut limits, "http://x", Answer::Answered);
        for f in 0..3 {
            limits.submit(attempt("http://x", f, 1));
        }
        let running = admitted(&mut limits);
        assert_eq!((running.len(), limits.waiting()), (1, 2));
        assert_eq!(limits.drop_queued(), 2);
        assert_eq!(limits.waiting(), 0);
        for (_, slot) in running {
            limits.finish(slot, Answer::Cancelled);
        }
        assert_eq!(limits.in_flight(), 0);
        assert!(limits.origins.values().all(Origin::is_idle));
    }

    #[test]
    fn pruning_never_forgets_an_origin_with_attempts_in_flight() {
        let mut limits = limits(4096, 1);
        settle(&mut limits, "http://busy", Answer::Answered);
        limits.submit(attempt("http://busy", 1, 1));
        let held = admitted(&mut limits);
        for i in 0..3000 {
            settle(&mut limits, &format!("http://o{i}"), Answer::Answered);
        }
        limits.submit(attempt("http://busy", 2, 1));
        assert!(
            admitted(&mut limits).is_empty(),
            "the busy origin's bound still holds after pruning"
        );
        assert_eq!(limits.health("http://busy"), Health::Answering);
        assert!(limits.origins.len() < 3000, "idle origins were pruned");
        drop(held);
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin_of(&Target::Http("https://Example.org:8443/cb?x=1".into())),
            "https://example.org:8443"
        );
        assert_eq!(
            origin_of(&Target::Http("http://example.org/cb".into())),
            "http://example.org"
        );
    }
}
