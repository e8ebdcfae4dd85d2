//! Bounds on attempts in flight: globally and per origin, with first attempts and retries
//! counted apart.
//!
//! SPEC §6 "Isolation": a slow, failing or dead receiver must never delay deliveries to
//! others. A per-origin bound keeps one receiver from taking every slot; separate pools for
//! first attempts and retries keep a backlog of retries (which are, by nature, to receivers
//! that are failing) from standing in front of fresh deliveries. Waiting is FIFO within a
//! pool (tokio's semaphore is fair), and the origin's permit is taken before the global one,
//! so an attempt queued behind its own dead origin holds no global slot while it waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The semaphores; cheap to share.
pub struct Limits {
    config: LimitsConfig,
    global: Pair,
    origins: Mutex<HashMap<String, Arc<Pair>>>,
}

/// Held while an attempt is in flight; dropping it frees the slots.
pub struct Slot {
    _origin: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Limits {
    /// New bounds.
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config,
            global: Pair::new(config.global, config.global / 4),
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot to `origin` in `pool`.
    pub async fn acquire(&self, origin: &str, pool: Pool) -> Slot {
        let origin_sem = {
            let mut origins = self.origins.lock().expect("origin table");
            if origins.len() > 10_000 {
                // Forget idle origins (nobody holds or waits on their semaphores).
                origins.retain(|_, p| Arc::strong_count(p) > 1);
            }
            origins
                .entry(origin.to_owned())
                .or_insert_with(|| {
                    Arc::new(Pair::new(
                        self.config.per_origin,
                        self.config.per_origin / 2,
                    ))
                })
                .clone()
        };
        let origin_permit = origin_sem
            .get(pool)
            .acquire_owned()
            .await
            .expect("semaphores are never closed");
        let global_permit = self
            .global
            .get(pool)
            .acquire_owned()
            .await
            .expect("semaphores are never closed");
        Slot {
            _origin: origin_permit,
            _global: global_permit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_origin_does_not_block_another() {
        let limits = Limits::new(LimitsConfig {
            global: 8,
            per_origin: 2,
        });
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
        let limits = Limits::new(LimitsConfig {
            global: 8,
            per_origin: 4,
        });
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
}
