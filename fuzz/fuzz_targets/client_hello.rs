//! The inbound's first bytes: the first-byte sniff (TLS or plaintext), then the ClientHello read as
//! the inbound reads it (rustls' Acceptor, cordon's ALPN choice, cordon's server config with its
//! client-certificate verifier), then whatever follows it.
#![no_main]

use std::sync::{Arc, OnceLock};

use cordon::agent::config::TlsSource;
use cordon::pki::{Ca, HOP_ALPNS, ServiceName, TlsStore, TrustDomain};
use libfuzzer_sys::fuzz_target;

/// The first byte of a TLS handshake record, as the inbound sniffs it.
const TLS_HANDSHAKE: u8 = 0x16;

fn store() -> &'static (Arc<TlsStore>, ServiceName) {
    static STORE: OnceLock<(Arc<TlsStore>, ServiceName)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        let td = TrustDomain::new("fuzz.internal").expect("a trust domain");
        let ca_dir = dir.join("ca");
        Ca::init(&ca_dir, &td).expect("a CA");
        let name = ServiceName::new("db").expect("a name");
        let store = TlsStore::load(&TlsSource::LocalCa { ca_dir, days: 1 }, &td, std::slice::from_ref(&name))
            .expect("TLS material");
        (store, name)
    })
}

fuzz_target!(|data: &[u8]| {
    let (store, name) = store();
    if data.first() != Some(&TLS_HANDSHAKE) {
        return; // plaintext: the inbound relays it as bytes
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    let accepted = loop {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err(_) => return,
        }
    };
    let hop = accepted.client_hello().alpn().is_some_and(|mut offered| offered.any(|p| HOP_ALPNS.contains(&p)));
    let Some(server) = store.server_config(name, hop) else { return };
    let Ok(mut conn) = accepted.into_connection(server.config) else { return };
    for _ in 0..64 {
        match conn.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if conn.process_new_packets().is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = conn.write_tls(&mut out);
});
