//! `cordon.toml`: parsed and validated, or refused with every bad field named.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match cordon::agent::config::Config::parse(text, Path::new("/etc/cordon/cordon.toml")) {
        Ok(config) => {
            let _ = config.identities();
            let _ = config.ledger_path();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
