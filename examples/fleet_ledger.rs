//! A synthetic fleet ledger and a policy to judge it by, for `scripts/report-scale.sh`:
//!
//! fleet_ledger DIR SERVICES [HOURS]    writes DIR/ledger.db and DIR/policy.toml
//!
//! Each service has one to seven callers (in fleets of 1,000 or more, every thousandth is a hub
//! with 200), mostly over mTLS, some in plaintext, some from HAProxy logs, some from unknown
//! addresses; a few edges are seen once only (rare). The policy allows `* -> *` except that every ninth service allows only its
//! first caller, and every twenty-fifth is enforced. Written through the ledger's recorder, as an
//! agent would; the count of events is bounded by SERVICES x HOURS x the callers.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use cordon::ledger::{EdgeKey, Event, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

const WORDS: [&str; 12] =
    ["api", "auth", "billing", "cart", "catalog", "db", "search", "web", "mail", "queue", "cache", "batch"];
/// 2026-11-01T00:00:00Z.
const T0: u64 = 1_793_491_200;

fn name(i: u64) -> String {
    format!("{}-{i:04}", WORDS[(i % WORDS.len() as u64) as usize])
}

fn callers(dest: u64, services: u64) -> Vec<(String, Identified)> {
    let count = if services >= 1000 && dest % 1000 == 7 { 200 } else { 1 + dest % 7 };
    let mut out = Vec::new();
    for k in 0..count {
        let i = dest * 31 + k;
        let identified = match i % 100 {
            0..=84 => Identified::Mtls,
            85..=91 => Identified::PlaintextIp,
            92..=96 => Identified::HaproxyLog,
            _ => Identified::Unknown,
        };
        let source = match identified {
            Identified::Unknown => format!("ip:10.{}.{}.{}", i % 250, (i / 250) % 250, 1 + i % 200),
            _ => name((dest + 1 + k * 13 + k * k) % services),
        };
        if source != name(dest) && !out.iter().any(|(s, _)| *s == source) {
            out.push((source, identified));
        }
    }
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fleet_ledger DIR SERVICES [HOURS]";
    let dir = std::path::PathBuf::from(args.first().ok_or(usage)?);
    let services: u64 = args.get(1).ok_or(usage)?.parse()?;
    let hours: u64 = args.get(2).map_or(Ok(20), |h| h.parse())?;
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "fleet", 65_536, Duration::from_secs(1))?;
    let edges: Vec<(u64, Vec<(String, Identified)>)> =
        (0..services).map(|d| (d, callers(d, services))).collect();
    let mut events = 0u64;
    for hour in 0..hours {
        // Spread over nine days, so that edges seen in one hour only count as rare.
        let at = UNIX_EPOCH + Duration::from_secs(T0 + hour * 3600 * 11);
        for (dest, callers) in &edges {
            for (k, (source, identified)) in callers.iter().enumerate() {
                if hour > 0 && (dest + k as u64).is_multiple_of(17) {
                    continue; // a periodic job: seen in the first hour only
                }
                let edge = EdgeKey {
                    source: source.clone(),
                    destination: name(*dest),
                    identified: *identified,
                    mode: if dest.is_multiple_of(25) { Mode::Enforce } else { Mode::Learn },
                    verdict: Verdict::Allow,
                };
                for _ in 0..1 + (dest + k as u64) % 3 {
                    handle.record_wait(Event::Opened { edge: edge.clone(), at });
                    // Bytes each way: connections that carried data, not port probes.
                    handle.record_wait(Event::Closed {
                        edge: edge.clone(),
                        at,
                        bytes_to_destination: 64,
                        bytes_to_source: 512,
                        duration: Duration::from_millis(5),
                    });
                    events += 2;
                }
            }
        }
    }
    recorder.shutdown();
    let mut policy = String::from("[modes]\n\"*\" = \"learn\"\n");
    for d in (0..services).filter(|d| d.is_multiple_of(25)) {
        let _ = writeln!(policy, "\"{}\" = \"enforce\"", name(d));
    }
    policy.push_str("\n[[intention]]\nsource = \"*\"\ndestination = \"*\"\naction = \"allow\"\n");
    for (dest, callers) in edges.iter().filter(|(d, _)| d % 9 == 4) {
        let _ = write!(
            policy,
            "\n[[intention]]\nsource = \"*\"\ndestination = \"{}\"\naction = \"deny\"\n",
            name(*dest)
        );
        if let Some((first, _)) = callers.iter().find(|(s, _)| !s.starts_with("ip:")) {
            let _ = write!(
                policy,
                "\n[[intention]]\nsource = \"{first}\"\ndestination = \"{}\"\naction = \"allow\"\n",
                name(*dest)
            );
        }
    }
    std::fs::write(dir.join("policy.toml"), policy)?;
    println!("{}: {services} services, {events} connection events over {hours} hours", db.display());
    Ok(())
}
