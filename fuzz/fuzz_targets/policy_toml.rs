//! The policy file: parsed or refused naming file and line; a parsed policy answers every question.
#![no_main]

use std::path::Path;

use cordon::policy::{DecisionContext, Identified, Subject, decide};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match cordon::policy::Policy::parse(text, Path::new("policy.toml")) {
        Ok(policy) => {
            let names: Vec<String> = policy.intentions().iter().map(|i| format!("{i:?}")).collect();
            let _ = policy.intention_for("web", "db");
            for (source, identified) in [("web", Identified::Mtls), ("ip:10.0.0.7", Identified::Unknown)] {
                let subject = Subject::recorded(source, identified);
                let _ = decide(&policy, &subject, "db", &DecisionContext::review());
            }
            let _ = policy.mode("db");
            let _ = policy.version();
            let _ = names;
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
