//! Reads the aggregator's Redis windows for one account, in one round trip.
//!
//! Key names come from [`meterline_schemas::keys`], the contract the aggregator writes by.

use chrono::{DateTime, Duration, Utc};
use meterline_schemas::keys::{field, Dim, Grain, Keys};
use meterline_schemas::limits::{RawUsage, WindowCounters};
use redis::aio::ConnectionManager;

#[derive(Clone)]
pub struct HotState {
    redis: ConnectionManager,
    keys: Keys,
}

/// This month's distinct dimensions, for `/usage`.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct MonthDimensions {
    pub models: Vec<String>,
    pub providers: Vec<String>,
    pub regions: Vec<String>,
}

impl HotState {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self { redis, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Everything one decision needs: the month, day and session hashes, the session sets and
    /// the two latest minutes' request counts. One pipelined round trip.
    pub async fn usage(
        &self,
        account: &str,
        session_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> redis::RedisResult<RawUsage> {
        let k = &self.keys;
        let month = Grain::Month.window_start(now);
        let day = Grain::Day.window_start(now);
        let minute = Grain::Minute.window_start(now);
        let month_sessions = k.month_set(account, month, Dim::Sessions);
        let day_sessions = k.day_sessions(account, day);
        let mut p = redis::pipe();
        p.hgetall(k.window(account, Grain::Month, month))
            .hgetall(k.window(account, Grain::Day, day))
            .scard(&day_sessions)
            .scard(&month_sessions)
            .hget(k.window(account, Grain::Minute, minute), field::REQUESTS)
            .hget(
                k.window(account, Grain::Minute, minute - Duration::minutes(1)),
                field::REQUESTS,
            );
        if let Some(s) = session_id {
            p.hgetall(k.session(account, s))
                .sismember(&day_sessions, s)
                .sismember(&month_sessions, s);
        }
        let mut redis = self.redis.clone();
        type Windows = (
            WindowCounters,
            WindowCounters,
            u64,
            u64,
            Option<i64>,
            Option<i64>,
        );
        // The session's hash and whether the day and month already count it.
        type Session = (WindowCounters, bool, bool);
        let ((month, day, day_sessions, month_sessions, this, last), session): (
            Windows,
            Option<Session>,
        ) = if session_id.is_some() {
            let (m, d, ds, ms, this, last, s, in_day, in_month) = p.query_async(&mut redis).await?;
            ((m, d, ds, ms, this, last), Some((s, in_day, in_month)))
        } else {
            (p.query_async(&mut redis).await?, None)
        };
        let (known_today, known_this_month) = session
            .as_ref()
            .map_or((false, false), |(_, d, m)| (*d, *m));
        Ok(RawUsage {
            month,
            day,
            session: session.map(|(s, _, _)| s),
            day_sessions,
            month_sessions,
            session_known_today: known_today,
            session_known_this_month: known_this_month,
            requests_this_minute: this.unwrap_or(0),
            requests_last_minute: last.unwrap_or(0),
        })
    }

    pub async fn month_dimensions(
        &self,
        account: &str,
        now: DateTime<Utc>,
    ) -> redis::RedisResult<MonthDimensions> {
        let month = Grain::Month.window_start(now);
        let k = &self.keys;
        let (mut models, mut providers, mut regions): (Vec<String>, Vec<String>, Vec<String>) =
            redis::pipe()
                .smembers(k.month_set(account, month, Dim::Models))
                .smembers(k.month_set(account, month, Dim::Providers))
                .smembers(k.month_set(account, month, Dim::Regions))
                .query_async(&mut self.redis.clone())
                .await?;
        models.sort();
        providers.sort();
        regions.sort();
        Ok(MonthDimensions {
            models,
            providers,
            regions,
        })
    }
}
