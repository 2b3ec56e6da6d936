//! One module per subcommand of `meterline`: `main.rs` parses the command line and hands each
//! command to its handler here.

pub mod accounts;
pub mod experiments;
pub mod notifications;
pub mod rebuild;
pub mod report;
pub mod review;
pub mod run;
pub mod scores;
pub mod simulate;
pub mod tokens;
