//! Reading a Prometheus histogram off a `/metrics` page: the server-side view of a benchmark's
//! latencies, diffed over the measured window.

use anyhow::Result;

pub(crate) const QUOTA_CHECK_SECONDS: &str =
    "meterline_ingest_request_seconds_bucket{endpoint=\"quota_check\"";
pub(crate) const QUOTA_CHECK_REDIS_SECONDS: &str =
    "meterline_read_hot_state_seconds_bucket{endpoint=\"quota_check\"";

/// The Prometheus text a `/metrics` endpoint serves.
pub(crate) async fn metrics_text(http: &reqwest::Client, url: &str) -> Result<String> {
    Ok(http.get(url).send().await?.text().await?)
}

/// A Prometheus histogram's cumulative buckets (upper bound in seconds, count) from `/metrics`
/// text, for the series whose lines start with `series`.
pub(crate) fn histogram_buckets(metrics: &str, series: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), n))
        })
        .collect()
}

/// The sum of a counter's series whose lines start with `series` (every label set), from
/// `/metrics` text: `meterline_aggregator_stage_seconds_total{stage="fold"` sums that stage.
pub(crate) fn counter_sum(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The upper bound, in milliseconds, of the first bucket holding the `p` quantile.
pub(crate) fn bucket_quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    buckets
        .iter()
        .find(|(_, n)| total > 0.0 && *n >= total * p)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# TYPE meterline_read_hot_state_seconds histogram
meterline_read_hot_state_seconds_bucket{endpoint=\"quota_check\",le=\"0.0005\"} 80
meterline_read_hot_state_seconds_bucket{endpoint=\"quota_check\",le=\"0.001\"} 95
meterline_read_hot_state_seconds_bucket{endpoint=\"quota_check\",le=\"0.002\"} 99
meterline_read_hot_state_seconds_bucket{endpoint=\"quota_check\",le=\"+Inf\"} 100
meterline_read_hot_state_seconds_bucket{endpoint=\"usage\",le=\"0.0005\"} 3
";

    #[test]
    fn a_counter_sums_its_series_and_nothing_else() {
        let text = "\
# TYPE meterline_aggregator_stage_seconds_total counter
meterline_aggregator_stage_seconds_total{stage=\"fold\"} 1.5
meterline_aggregator_stage_seconds_total{stage=\"redis_apply\"} 4
meterline_aggregator_stage_seconds_total_extra 100
";
        let stage = "meterline_aggregator_stage_seconds_total{";
        assert_eq!(counter_sum(text, stage), 5.5);
        assert_eq!(counter_sum(text, &format!("{stage}stage=\"fold\"")), 1.5);
        assert_eq!(counter_sum(text, "meterline_absent"), 0.0);
    }

    #[test]
    fn buckets_are_read_for_one_series_only() {
        let b = histogram_buckets(METRICS, QUOTA_CHECK_REDIS_SECONDS);
        assert_eq!(
            b,
            vec![
                (0.0005, 80.0),
                (0.001, 95.0),
                (0.002, 99.0),
                (f64::INFINITY, 100.0)
            ]
        );
    }

    #[test]
    fn a_quantile_is_the_first_bucket_holding_it() {
        let b = histogram_buckets(METRICS, QUOTA_CHECK_REDIS_SECONDS);
        assert_eq!(bucket_quantile(&b, 0.5), 0.5);
        assert_eq!(bucket_quantile(&b, 0.9), 1.0);
        assert_eq!(bucket_quantile(&b, 0.99), 2.0);
        assert_eq!(bucket_quantile(&b, 0.999), f64::INFINITY);
        assert!(
            bucket_quantile(&[], 0.5).is_nan(),
            "no observations, no quantile"
        );
    }
}
