//! A side's health as the monitor sees it.

use std::fmt;

/// A side's health, from consecutive heartbeat results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// No heartbeat has finished yet.
    Unknown,
    /// The last heartbeat succeeded.
    Up,
    /// Heartbeats failed, but fewer than `failure_threshold` in a row.
    Suspect,
    /// At least `failure_threshold` heartbeats in a row failed.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
        })
    }
}
