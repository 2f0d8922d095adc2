//! What the data plane tells the recorder about a connection.

use std::time::{Duration, SystemTime};

use crate::base::{Identified, Mode, Verdict};

/// One edge of the graph as a connection saw it: the ledger aggregates events by this key and
/// the hour they fall in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeKey {
    /// Caller name: a service name, or `ip:A.B.C.D` for an unknown caller.
    pub source: String,
    /// Destination service.
    pub destination: String,
    pub identified: Identified,
    /// The destination's mode when the connection was decided.
    pub mode: Mode,
    /// What the intentions said, whether or not the mode enforced it.
    pub verdict: Verdict,
}

/// A connection opening (counted once, denied ones included), carrying bytes while it stays open,
/// or closing (with the bytes not reported yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened {
        edge: EdgeKey,
        at: SystemTime,
    },
    /// Bytes an open connection carried since it opened or last reported: a connection that
    /// stays open for days (a pool's) is seen carrying data, not taken for a probe.
    Progress {
        edge: EdgeKey,
        at: SystemTime,
        bytes_to_destination: u64,
        bytes_to_source: u64,
    },
    Closed {
        edge: EdgeKey,
        at: SystemTime,
        /// Bytes from the caller to the destination app (since the last `Progress`).
        bytes_to_destination: u64,
        /// Bytes from the destination app back to the caller.
        bytes_to_source: u64,
        duration: Duration,
    },
}
