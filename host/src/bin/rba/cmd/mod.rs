//! One module per `rba` command: its arguments and what it prints.

pub mod analyze;
pub mod bench;
pub mod calibrate;
pub mod compact;
pub mod demo;
pub mod deploy;
pub mod devices;
pub mod evaluate;
pub mod fleet;
pub mod inspect;
pub mod probe;
pub mod report;
pub mod rollback;
pub mod stats;
pub mod status;
