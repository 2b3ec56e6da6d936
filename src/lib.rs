//! The `meterline` binary's library half: configuration, migrations, telemetry and the wiring
//! that turns the component crates into running services, and one handler per subcommand
//! (`cmd`). `main.rs` is only the command line on top, and the integration tests under
//! `tests/` drive the same functions.

pub mod cmd;
pub mod config;
pub mod migrate;
pub mod report;
pub mod services;
pub mod telemetry;

pub use config::Config;
