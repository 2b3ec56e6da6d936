//! Redis: the hot state the read path and the scorer read. The key layout itself is a contract
//! and lives in `meterline_schemas::keys`.
//!
//! [`HotConn`] is one connection type for both deployments: a standalone server (`redis.url`)
//! or a Redis Cluster (`redis.cluster_nodes`). Both are multiplexed and cheap to clone. In a
//! cluster, a command or script goes to the node of its first key's slot, and a pipeline must
//! stay within one slot: hot-state layout v2 (`keys::hot`) tags every key of an account with
//! the account, so everything one account needs is one slot.

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or, for TLS, `rediss://`. Unused when `cluster_nodes` is set.
    pub url: String,
    /// A Redis Cluster's seed nodes, comma-separated (`redis://10.0.0.1:7000,redis://…`);
    /// empty for a standalone server at `url`. A string, so that
    /// `METERLINE_REDIS__CLUSTER_NODES` overrides it like any other key.
    pub cluster_nodes: String,
    /// Prepended to every key we own, so several deployments (or tests) can share a server.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: String::new(),
            key_prefix: "ml:".into(),
        }
    }
}

impl RedisConfig {
    /// The cluster's seed nodes; empty for a standalone server.
    pub fn cluster_node_list(&self) -> Vec<String> {
        self.cluster_nodes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Connects to the cluster when `cluster_nodes` names any node, else to `url`.
    pub async fn connect(&self) -> RedisResult<HotConn> {
        let nodes = self.cluster_node_list();
        if nodes.is_empty() {
            let client = ::redis::Client::open(self.url.as_str())?;
            Ok(HotConn::Single(client.get_connection_manager().await?))
        } else {
            let client = ::redis::cluster::ClusterClient::new(nodes)?;
            Ok(HotConn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// A connection to the hot state's Redis, standalone or cluster; see the module documentation.
#[derive(Clone)]
pub enum HotConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl HotConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, HotConn::Cluster(_))
    }
}

impl ConnectionLike for HotConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            HotConn::Single(c) => c.req_packed_command(cmd),
            HotConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            HotConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            HotConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            HotConn::Single(c) => c.get_db(),
            HotConn::Cluster(c) => c.get_db(),
        }
    }
}
