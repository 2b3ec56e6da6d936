//! A per-token event budget on ingest: a token bucket of `rate_limit_events_per_sec` refilled
//! continuously, holding at most `rate_limit_burst_events`. A runaway gateway gets `429` with
//! `Retry-After` instead of filling Kafka; the others are not slowed. Counted in events, not
//! requests, because events are what costs. A batch larger than the burst is let through when
//! the bucket is full and leaves it in debt, so no valid batch is refused forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Events in this token's last batch: what its next one will probably need.
    last_batch: f64,
}

pub struct EventRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl EventRateLimiter {
    /// `rate` events per second per token, `burst` at most at once; a rate of 0 turns it off.
    pub fn new(rate: u64, burst: u64) -> Self {
        Self {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// If `token`'s bucket cannot hold a batch the size of the token's last one now, how long
    /// until it can. Checked before a body is read: a runaway gateway is refused without ingest
    /// reading, parsing and then discarding each batch. (A smaller batch than the last would
    /// have fitted is refused too; it is told to come back when the usual size fits.)
    pub fn exhausted(&self, token: &str, now: Instant) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let buckets = self.buckets.lock().expect("poisoned");
        let b = buckets.get(token)?;
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        let tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        let need = b.last_batch.clamp(1.0, self.burst);
        (tokens < need).then(|| Duration::from_secs_f64((need - tokens) / self.rate))
    }

    /// Takes `n` events from `token`'s budget, or says how long until they would fit.
    pub fn take(&self, token: &str, n: u64, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 || n == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("poisoned");
        let b = buckets.entry(token.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            last_batch: 0.0,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        b.last_batch = n as f64;
        let need = (n as f64).min(self.burst);
        if b.tokens >= need {
            b.tokens -= n as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_burst_then_its_rate() {
        let l = EventRateLimiter::new(1_000, 2_000);
        let t0 = Instant::now();
        assert!(l.take("a", 2_000, t0).is_ok());
        let wait = l.take("a", 500, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another token has its own budget.
        assert!(l.take("b", 500, t0).is_ok());
        // Half a second later 500 fit again.
        assert!(l.take("a", 500, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.take("a", 1, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let l = EventRateLimiter::new(1_000, 1_000);
        let t0 = Instant::now();
        assert!(l.take("a", 5_000, t0).is_ok());
        let wait = l.take("a", 1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(4_001));
    }

    #[test]
    fn a_bucket_short_of_the_last_batch_size_is_refused_before_reading() {
        let l = EventRateLimiter::new(1_000, 1_000);
        let t0 = Instant::now();
        assert_eq!(l.exhausted("a", t0), None, "an unseen token has its burst");
        assert!(l.take("a", 400, t0).is_ok());
        assert_eq!(
            l.exhausted("a", t0),
            None,
            "600 events left, the last batch was 400"
        );
        assert!(l.take("a", 400, t0).is_ok());
        // 200 left: the wait is until a batch like the last one fits (200 more at 1,000/s).
        assert_eq!(l.exhausted("a", t0), Some(Duration::from_millis(200)));
        assert_eq!(l.exhausted("a", t0 + Duration::from_millis(200)), None);
        assert_eq!(l.exhausted("b", t0), None, "buckets are per token");
    }

    #[test]
    fn zero_turns_it_off() {
        let l = EventRateLimiter::new(0, 0);
        for _ in 0..10 {
            assert!(l.take("a", 1_000_000, Instant::now()).is_ok());
        }
    }
}
