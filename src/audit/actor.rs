//! Who acts: the local user (by uid, through the password database) and the host's name.
//!
//! Owns the audit trail's two libc calls (`getpwuid_r`, `gethostname`), each on buffers this
//! file allocates and keeps no pointer into.
#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};

/// The user and host behind an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The login name of the process's real uid, else `$USER`, else the uid as digits.
    pub user: String,
    /// The process's real uid.
    pub uid: u32,
    /// The host's name (`gethostname`).
    pub host: String,
}

impl Actor {
    /// The user and host running this process.
    pub fn local() -> Actor {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let user = user_name(uid)
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| uid.to_string());
        Actor { user, uid, host: host_name() }
    }
}

/// The login name of `uid` from the password database (files, LDAP, whatever nsswitch says).
fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value of this plain C struct.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to a live local of the right type; `buf` is writable for
        // `buf.len()` bytes, and the strings `pwd` points at live in `buf`, read before it drops.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    }
}

/// The host's name; `/proc/sys/kernel/hostname` as the agent reads it when the call fails.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
        if !name.is_empty() {
            return name;
        }
    }
    crate::agent::config::local_hostname()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_actor_has_a_name_and_a_host() {
        let me = Actor::local();
        assert!(!me.user.is_empty());
        assert!(!me.host.is_empty());
        assert_eq!(me.host, crate::agent::config::local_hostname());
    }
}
