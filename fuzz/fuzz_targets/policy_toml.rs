//! The policy file: parsed or refused naming file and line; a parsed policy answers every question.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match cordon::policy::Policy::parse(text, Path::new("policy.toml")) {
        Ok(policy) => {
            let names: Vec<String> = policy.intentions().iter().map(|i| format!("{i:?}")).collect();
            let _ = policy.decide("web", "db");
            let _ = policy.mode("db");
            let _ = policy.version();
            let _ = names;
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
