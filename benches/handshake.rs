//! TLS 1.3 handshakes between two TlsStores, in process over tokio duplex pipes:
//! `cargo bench --bench handshake`. Full (a fresh client config, nothing to resume) and resumed.
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use cordon::pki::TlsSource;
use cordon::pki::{Ca, ServiceName, TlsStore, TrustDomain, server_name};

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let td = TrustDomain::new("bench.internal").expect("td");
    let ca = Ca::init(&dir.path().join("ca"), &td).expect("ca");
    for s in ["db", "web"] {
        let leaf = ca.issue(&ServiceName::new(s).expect("name"), 7).expect("leaf");
        ca.write_leaf(&leaf, &dir.path().join("tls").join(s)).expect("write");
    }
    let source = TlsSource::Files { ca: dir.path().join("ca/ca.pem"), dir: dir.path().join("tls") };
    let (db, web) = (ServiceName::new("db").expect("db"), ServiceName::new("web").expect("web"));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let server = TlsStore::load(&source, &td, std::slice::from_ref(&db)).expect("server store");
    // Over pipes there is no address; the client keeps tickets per backend address all the same.
    let backend = std::net::SocketAddr::from(([127, 0, 0, 1], 14000));
    let run = |fresh: bool, n: usize| -> f64 {
        let shared = TlsStore::load(&source, &td, std::slice::from_ref(&web)).expect("client store");
        rt.block_on(async {
            let start = Instant::now();
            let mut kinds_wrong = 0;
            for _ in 0..n {
                let client = if fresh {
                    TlsStore::load(&source, &td, std::slice::from_ref(&web)).expect("client store")
                } else {
                    shared.clone()
                };
                let config = client
                    .client_config(&web, &db, backend, cordon::pki::HopOffer::None)
                    .expect("client config");
                let (a, b) = tokio::io::duplex(64 * 1024);
                let acceptor = tokio_rustls::TlsAcceptor::from(
                    server.server_config(&db, false).expect("server config").config,
                );
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
                let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(server_name(&db), b));
                let (mut s, mut c) = (s.expect("server side"), c.expect("client side"));
                // One byte each way, as a real connection does: TLS 1.3 session tickets arrive
                // after the handshake, and only a client that reads gets them.
                let mut one = [0u8; 1];
                let (w, r) = tokio::join!(s.write_all(b"x"), c.read_exact(&mut one));
                w.expect("server write");
                r.expect("client read");
                if fresh == (c.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)) {
                    kinds_wrong += 1;
                }
            }
            let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
            // The first of a warm-up run is full; anything else is a finding worth printing.
            if kinds_wrong > 1 {
                println!("warning: {kinds_wrong} of {n} handshakes were not of the kind measured");
            }
            per
        })
    };
    // Warm the session cache for the resumed run.
    run(false, 10);
    let full = run(true, 300);
    let resumed = run(false, 2000);
    println!(
        "tls_handshake_full: {full:.0} us ({:.0}/s), tls_handshake_resumed: {resumed:.0} us ({:.0}/s) \
         (both sides in one thread, one byte each way; a full handshake includes loading a fresh client store)",
        1e6 / full,
        1e6 / resumed
    );
}
