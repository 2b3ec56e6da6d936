//! The one backoff every retry loop in the components uses (the gateway client keeps its own:
//! it has no workspace dependency).

use std::time::Duration;

use backon::ExponentialBuilder;

/// Delays that double from `base` up to `max`, each with "equal jitter" (a random point in
/// the upper half of that delay, so callers that failed together do not retry in lockstep),
/// and never run out: the n-th delay lies in `[d/2, d)` for d = `base` × 2^(n-1) capped at
/// `max`. A caller that must give up counts its attempts itself.
///
/// backon's jitter adds up to the whole delay on top of it, so it is given half of `base` and
/// `max`.
pub fn equal_jitter(base: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(base / 2)
        .with_max_delay(max / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}
