//! Retry scheduling (rule 4): the backoff ladder, its deterministic ±20 % jitter, and how a
//! receiver's `Retry-After` moves the next attempt.
//!
//! Jitter spreads retries of many failed deliveries so they do not hit a recovering receiver
//! at once. It must not come from a random source: replay must reach the same `next_at`. So it
//! is a hash of (delivery id, attempt number) — as spread out as randomness for this purpose,
//! and a pure function.

use crate::ids::{DeliveryId, Timestamp};

/// The jitter of one retry in thousandths, in `-200..=200`.
pub fn jitter_permille(delivery: DeliveryId, attempt: u32) -> i64 {
    let h = splitmix64(delivery.0 .0 ^ (u64::from(attempt) << 48) ^ 0x6362_5f6a_6974_7465);
    // 401 buckets: -200..=200. The modulo bias over 2^64 is far below anything measurable.
    (h % 401) as i64 - 200
}

/// The delay after attempt `attempt` (from 1) of `delivery` failed: the ladder's entry for
/// that attempt (the last entry repeats), with jitter applied. In milliseconds.
pub fn delay_ms(backoff_secs: &[u32], delivery: DeliveryId, attempt: u32) -> u64 {
    assert!(
        !backoff_secs.is_empty(),
        "a validated callback has a backoff ladder"
    );
    let step = (attempt.max(1) - 1) as usize;
    let base_ms = i64::from(backoff_secs[step.min(backoff_secs.len() - 1)]) * 1000;
    let jittered = base_ms + base_ms * jitter_permille(delivery, attempt) / 1000;
    jittered.max(0) as u64
}

/// When to try again after attempt `attempt` failed at `now`.
///
/// A `Retry-After` (sent with 429 or 503) pushes the retry later, never earlier, and no later
/// than twice the scheduled delay: a receiver can ask for patience, not for silence.
pub fn retry_at(
    now: Timestamp,
    backoff_secs: &[u32],
    delivery: DeliveryId,
    attempt: u32,
    retry_after_secs: Option<u32>,
) -> Timestamp {
    let delay = delay_ms(backoff_secs, delivery, attempt);
    let scheduled = now.plus_ms(delay);
    match retry_after_secs {
        Some(secs) => {
            let asked = now.plus_secs(secs);
            let cap = now.plus_ms(delay.saturating_mul(2));
            scheduled.max(asked.min(cap))
        }
        None => scheduled,
    }
}

/// SplitMix64's finalizer: a fast, well-mixed bijection of `u64` (Steele, Lea, Flood 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Seq;

    const LADDER: [u32; 7] = crate::config::DEFAULT_BACKOFF_SECS;

    #[test]
    fn delays_follow_the_ladder_within_twenty_percent() {
        for d in 0..500u64 {
            let delivery = DeliveryId(Seq(d));
            for attempt in 1..=12u32 {
                let base = u64::from(LADDER[(attempt as usize - 1).min(6)]) * 1000;
                let got = delay_ms(&LADDER, delivery, attempt);
                assert!(
                    got * 10 >= base * 8 && got * 10 <= base * 12,
                    "attempt {attempt}: {got} vs {base}"
                );
            }
        }
    }

    #[test]
    fn jitter_is_a_pure_function_and_spreads() {
        let a: Vec<i64> = (0..1000)
            .map(|d| jitter_permille(DeliveryId(Seq(d)), 1))
            .collect();
        let b: Vec<i64> = (0..1000)
            .map(|d| jitter_permille(DeliveryId(Seq(d)), 1))
            .collect();
        assert_eq!(a, b);
        let (lo, hi) = (a.iter().min().unwrap(), a.iter().max().unwrap());
        assert!(
            *lo < -180 && *hi > 180,
            "jitter spans the range: {lo}..{hi}"
        );
        let mean = a.iter().sum::<i64>() as f64 / 1000.0;
        assert!(mean.abs() < 20.0, "jitter is centred: {mean}");
    }

    #[test]
    fn retry_after_pushes_later_never_earlier_and_is_capped() {
        let d = DeliveryId(Seq(7));
        let now = Timestamp(1_000_000);
        let plain = retry_at(now, &[10], d, 1, None);
        let delay = plain.ms_since(now);
        // Asking for less than the schedule changes nothing.
        assert_eq!(retry_at(now, &[10], d, 1, Some(1)), plain);
        // Asking for a bit more is honoured.
        let asked = retry_at(now, &[10], d, 1, Some(15));
        assert_eq!(
            asked,
            now.plus_secs(15).max(plain).min(now.plus_ms(delay * 2))
        );
        // Asking for an hour is capped at twice the scheduled delay.
        assert_eq!(
            retry_at(now, &[10], d, 1, Some(3600)),
            now.plus_ms(delay * 2)
        );
    }
}
