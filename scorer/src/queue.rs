//! The scorer's work queue, kept in shares so that nothing global is on the aggregator's hot
//! path (issue 21):
//! - each usage partition's share, `<p>{pt:N}dirty`, which the partition's checkpoints and its
//!   account events fill;
//! - the scorer's own, `<p>dirty`: what it puts back after a failed round, and its daily full
//!   pass.
//!
//! `<p>queues` lists the shares in use (the aggregator adds a partition's when it first claims
//! it). Every command here names one key, so each goes to one slot, on a standalone Redis or a
//! Redis Cluster. An account may sit in several shares at once; a round scores it once. The
//! worker drains every share each tick, so the order shares are taken in only moves an
//! account within the tick.

use std::collections::BTreeSet;

use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::HotKeys;
use redis::RedisResult;

/// The scorer's queue over all its shares; clones share the connection.
#[derive(Clone)]
pub struct Queue {
    conn: HotConn,
    keys: HotKeys,
}

impl Queue {
    pub fn new(conn: HotConn, keys: HotKeys) -> Self {
        Self { conn, keys }
    }

    /// Every share's name, the scorer's own included, sorted.
    pub async fn shares(&self) -> RedisResult<Vec<String>> {
        let mut shares: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.scorer_queues())
            .query_async(&mut self.conn.clone())
            .await?;
        shares.insert(self.keys.scorer_own());
        Ok(shares.into_iter().collect())
    }

    /// Takes up to `n` distinct accounts, share after share. What is taken is gone from the
    /// queue: [`Self::put_back`] what could not be scored. If a share cannot be read, what was
    /// taken from the others goes back first.
    pub async fn take(&self, n: usize) -> RedisResult<Vec<String>> {
        let mut taken = BTreeSet::new();
        for share in self.shares().await? {
            if taken.len() >= n {
                break;
            }
            let popped: RedisResult<Vec<String>> = redis::cmd("SPOP")
                .arg(&share)
                .arg(n - taken.len())
                .query_async(&mut self.conn.clone())
                .await;
            match popped {
                Ok(ids) => taken.extend(ids),
                Err(e) => {
                    let taken: Vec<String> = taken.into_iter().collect();
                    if let Err(back) = self.put_back(&taken).await {
                        tracing::error!(error = %back, accounts = taken.len(), "could not queue accounts again; the daily pass will score them");
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken.into_iter().collect())
    }

    /// Queues accounts in the scorer's own share (a failed round, the daily full pass).
    pub async fn put_back(&self, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(self.keys.scorer_own())
            .arg(ids)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Accounts queued, over every share (an account in two shares counts twice).
    pub async fn queued(&self) -> RedisResult<u64> {
        let mut total = 0;
        for share in self.shares().await? {
            let n: u64 = redis::cmd("SCARD")
                .arg(share)
                .query_async(&mut self.conn.clone())
                .await?;
            total += n;
        }
        Ok(total)
    }
}
