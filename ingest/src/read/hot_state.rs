//! Reads the aggregator's Redis windows for one account, in one round trip to its slot.
//!
//! Key names and fields come from [`meterline_schemas::keys::hot`], the contract the
//! aggregator's state store writes by (layout v2).

use chrono::{DateTime, Utc};
use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::{self, HotKeys, SessionRead};
use meterline_schemas::keys::{Dim, Grain};
use meterline_schemas::limits::{RawUsage, WindowCounters};

/// The read path's view of the hot state, on a standalone Redis or a Redis Cluster.
#[derive(Clone)]
pub struct HotState {
    redis: HotConn,
    hot: HotKeys,
}

/// This month's distinct dimensions, for `/usage`.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct MonthDimensions {
    pub models: Vec<String>,
    pub providers: Vec<String>,
    pub regions: Vec<String>,
}

impl HotState {
    pub fn new(redis: HotConn, hot: HotKeys) -> Self {
        Self { redis, hot }
    }

    /// Everything one decision needs, in one round trip to the account's slot: its `cur` (the
    /// value, or the hash an account not written since 2026-12-05 still has), and when a
    /// session is named, the session's hash and whether this month's and today's session lists
    /// hold it (`keys::hot::raw_usage`).
    pub async fn usage(
        &self,
        account: &str,
        session_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> redis::RedisResult<RawUsage> {
        let k = &self.hot;
        let mut p = redis::pipe();
        p.get(k.cur(account)).hgetall(k.cur_hash(account));
        let mut redis = self.redis.clone();
        let (cur, session) = match session_id {
            Some(s) => {
                let month = Grain::Month.window_start(now);
                let day = Grain::Day.window_start(now);
                p.hgetall(k.session(account, s))
                    .cmd("HMGET")
                    .arg(k.dims(account, month))
                    .arg(hot::dims_member(Dim::Sessions, s))
                    .arg(hot::day_session_member(day, s));
                type Reply = (
                    Option<Vec<u8>>,
                    Vec<(String, String)>,
                    WindowCounters,
                    (Option<String>, Option<String>),
                );
                let (cur, hash, counters, known): Reply = p.query_async(&mut redis).await?;
                (
                    hot::read_cur(cur, hash),
                    Some(SessionRead {
                        counters,
                        known_this_month: known.0.is_some(),
                        known_today: known.1.is_some(),
                    }),
                )
            }
            None => {
                let (cur, hash): (Option<Vec<u8>>, Vec<(String, String)>) =
                    p.query_async(&mut redis).await?;
                (hot::read_cur(cur, hash), None)
            }
        };
        Ok(hot::raw_usage(&cur, session, now))
    }

    pub async fn month_dimensions(
        &self,
        account: &str,
        now: DateTime<Utc>,
    ) -> redis::RedisResult<MonthDimensions> {
        let (cur, hash): (Option<Vec<u8>>, Vec<(String, String)>) = redis::pipe()
            .get(self.hot.cur(account))
            .hgetall(self.hot.cur_hash(account))
            .query_async(&mut self.redis.clone())
            .await?;
        let lists = hot::month_lists(&hot::read_cur(cur, hash), now);
        Ok(MonthDimensions {
            models: lists.models,
            providers: lists.providers,
            regions: lists.regions,
        })
    }
}
