//! The revocation list: what an agent receives from the signing service or reads from its CA
//! directory, and what the service reads from `revoked.json`. Any bytes are parsed or refused
//! whole, never a panic; what the service accepts, every agent accepts as it is served; and the
//! copy an agent writes of a list reads back as the same list (an agent that restarts keeps it).
#![no_main]

use cordon::pki::Revocations;
use cordon::pki::issuer::RevocationList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = Revocations::parse(data, "fuzz") {
        let copy = Revocations::parse(&list.to_json(), "copy").expect("an agent's own copy parses");
        assert_eq!(copy, list, "the copy is the same list");
    }
    if let Ok(served) = RevocationList::parse(data, "fuzz") {
        let wire = serde_json::to_vec(&served).expect("a list serialises");
        Revocations::parse(&wire, "served").expect("what the service serves, agents accept");
    }
});
