//! Logging through `tracing`. `RUST_LOG` picks the level; `METERLINE_LOG_FORMAT=json` switches
//! to one JSON object per line for log shippers.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn,hyper=warn"));
    let json = std::env::var("METERLINE_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal; a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
