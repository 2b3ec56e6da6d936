//! `meterline run|ingest|aggregate|score|notify`: the components, until SIGINT or SIGTERM.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::services::{self, Components};
use crate::Config;

/// Runs `which` until the process is told to stop.
pub async fn run(config: &Config, which: Components) -> Result<()> {
    let running = services::start(config, which, None, shutdown_on_signal()).await?;
    running.wait().await?;
    Ok(())
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}
