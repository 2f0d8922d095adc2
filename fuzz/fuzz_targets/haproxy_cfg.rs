//! A Synapse-generated `haproxy.cfg`: parsed into listeners or refused with line numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match cordon_haproxy::parse_config(text) {
        Ok(parsed) => {
            let _ = format!("{parsed:?}");
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
