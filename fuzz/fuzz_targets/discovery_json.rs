//! A Synapse `<service>.json`: any bytes are parsed or refused, never a panic; what parses keeps
//! its invariants (an mTLS backend has a port to dial).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(backends) = cordon_discovery::parse_backends(data) {
        for b in &backends {
            let _ = b.ip();
            let _ = b.dial_port();
            let _ = b.is_mtls();
        }
    }
});
