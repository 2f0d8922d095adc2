//! Process limits the agent needs: open files. A proxy holds two sockets per relayed connection,
//! so the soft `RLIMIT_NOFILE` a service manager hands over (often 1024) caps it long before
//! `max_connections` does. Like HAProxy and nginx, the agent raises it to the hard limit at start
//! and warns when the configured connections still do not fit.
//!
//! Owns the only `unsafe` in cordon: two libc calls on a local struct, no pointers kept.
#![allow(unsafe_code)]

/// File descriptors the agent keeps besides its connections: listeners, the ledger and its log,
/// the decision log, watchers, the runtime.
const RESERVED: u64 = 64;

/// The open-files limit after [`raise_nofile`]: soft, hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard one. Errors only when the limit cannot be read.
pub fn raise_nofile() -> std::io::Result<NoFile> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own and pass by valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads one rlimit from a struct we own; it changes no memory of ours.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok(NoFile { before, soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// Descriptors `listeners` listeners need at `max_connections` each: two sockets per relayed
/// connection, plus what the agent keeps open besides.
pub fn needed(listeners: usize, max_connections: usize) -> u64 {
    (listeners as u64).saturating_mul(max_connections as u64).saturating_mul(2).saturating_add(RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let got = raise_nofile().unwrap();
        assert_eq!(got.soft, got.hard);
        assert!(got.soft >= got.before);
    }

    #[test]
    fn two_sockets_per_connection_per_listener() {
        assert_eq!(needed(2, 10_000), 40_064);
        assert_eq!(needed(0, 10_000), RESERVED);
    }
}
