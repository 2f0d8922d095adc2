//! TLS 1.3 session tickets on the client side, kept per backend.
//!
//! rustls keys its ticket cache by server name, and every backend of a service answers to the same
//! name. A ticket only resumes at the agent that issued it (each agent has its own ticket keys), so
//! a shared cache would offer one backend's tickets to the next and fall back to full handshakes
//! behind any load balancing. Each ticket is also single-use, so a busy pair of proxies needs
//! several at once. Hence a jar of tickets per (our identity, expected service, backend address),
//! with a bound on both the tickets per jar and the number of jars.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls_pki_types::ServerName;

use super::ServiceName;

/// Tickets kept per backend. Each resumption spends one and the server sends one new one
/// (`send_tls13_tickets = 1`), so the jar holds about as many as connections were open at once.
const TICKETS_PER_BACKEND: usize = 16;

/// Backends remembered per agent; past that, the longest-remembered one is forgotten (its next
/// connection is a full handshake).
const BACKENDS: usize = 512;

/// Who dials whom: a jar's key.
pub(super) type JarKey = (ServiceName, ServiceName, SocketAddr);

/// The tickets of one backend.
#[derive(Debug, Default)]
pub(super) struct TicketJar {
    inner: Mutex<Jar>,
}

#[derive(Debug, Default)]
struct Jar {
    kx_hint: Option<NamedGroup>,
    /// Oldest first; the newest is spent first.
    tickets: VecDeque<Tls13ClientSessionValue>,
}

impl TicketJar {
    fn jar(&self) -> std::sync::MutexGuard<'_, Jar> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientSessionStore for TicketJar {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.jar().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.jar().kx_hint
    }

    // cordon speaks TLS 1.3 only: there are no TLS 1.2 sessions to keep.
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut jar = self.jar();
        if jar.tickets.len() >= TICKETS_PER_BACKEND {
            jar.tickets.pop_front();
        }
        jar.tickets.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.jar().tickets.pop_back()
    }
}

/// Every backend's jar, bounded; lives outside the reloaded material so tickets survive a
/// certificate rotation.
#[derive(Debug, Default)]
pub(super) struct TicketJars {
    inner: Mutex<Jars>,
}

#[derive(Debug, Default)]
struct Jars {
    by_key: HashMap<JarKey, Arc<TicketJar>>,
    /// Keys in the order they were first seen, for eviction.
    order: VecDeque<JarKey>,
}

impl TicketJars {
    /// The jar for `key`, made on first use.
    pub(super) fn get(&self, key: &JarKey) -> Arc<TicketJar> {
        let mut jars = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(jar) = jars.by_key.get(key) {
            return jar.clone();
        }
        while jars.order.len() >= BACKENDS {
            if let Some(old) = jars.order.pop_front() {
                jars.by_key.remove(&old);
            }
        }
        let jar = Arc::new(TicketJar::default());
        jars.by_key.insert(key.clone(), jar.clone());
        jars.order.push_back(key.clone());
        jar
    }

    /// Forgets every ticket: after the trust bundle changes, no session from before it resumes.
    pub(super) fn clear(&self) {
        let mut jars = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for jar in jars.by_key.values() {
            jar.jar().tickets.clear();
        }
        jars.by_key.clear();
        jars.order.clear();
    }

    /// How many backends have a jar (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> JarKey {
        let n = |s: &str| ServiceName::new(s).unwrap();
        (n("web"), n("db"), SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn one_jar_per_backend_and_bounded() {
        let jars = TicketJars::default();
        assert!(Arc::ptr_eq(&jars.get(&key(1)), &jars.get(&key(1))));
        assert!(!Arc::ptr_eq(&jars.get(&key(1)), &jars.get(&key(2))));
        for port in 0..(BACKENDS as u16 + 10) {
            jars.get(&key(port));
        }
        assert_eq!(jars.len(), BACKENDS);
        // The first ones were forgotten, the last ones are kept.
        let last = jars.get(&key(BACKENDS as u16 + 9));
        assert!(Arc::ptr_eq(&last, &jars.get(&key(BACKENDS as u16 + 9))));
    }
}
