//! cordon-haproxy: the only code in cordon that knows HAProxy syntax.
//!
//! Two inputs, both read-only and both from hosts that ran Synapse's HAProxy before cordon:
//! - [`parse_config`] reads a Synapse-generated `haproxy.cfg` into the local listeners cordon takes
//!   over (one [`Listener`] per bound address), and reports what it cannot map as [`Skipped`].
//! - [`parse_log_line`] reads one HAProxy `tcplog` or `httplog` line, with or without a syslog
//!   prefix, into a [`LogRecord`] that borrows from the line.
//!
//! This crate must not know cordon's own formats (`cordon.toml`, the ledger, policy names): it
//! hands back HAProxy's facts and the `cordon` crate decides what they mean.
#![forbid(unsafe_code)]

mod config;
mod log;

pub use config::{ConfigError, ConfigErrors, ConfigParse, Listener, Skipped, parse_config};
pub use log::{
    Field, HttpFields, LogDate, LogError, LogRecord, SyslogHeader, SyslogTime, Timers, parse_log_line,
};
