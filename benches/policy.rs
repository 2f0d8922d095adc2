//! Policy evaluation with 10,000 intentions: `cargo bench --bench policy`.
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use cordon::policy::Policy;

fn main() {
    let mut text = String::from("[modes]\n\"*\" = \"learn\"\n");
    for i in 0..10_000 {
        let action = if i % 7 == 0 { "deny" } else { "allow" };
        text += &format!(
            "[[intention]]\nsource = \"svc{}\"\ndestination = \"svc{}\"\naction = \"{action}\"\n",
            i % 997,
            i
        );
    }
    text += "[[intention]]\nsource = \"*\"\ndestination = \"svc42\"\naction = \"allow\"\n";
    let start = Instant::now();
    let policy = Policy::parse(&text, Path::new("bench.toml")).expect("valid");
    let parsed = start.elapsed();
    let pairs: Vec<(String, String)> =
        (0..4096).map(|i| (format!("svc{}", (i * 31) % 1200), format!("svc{}", (i * 17) % 12_000))).collect();
    let n = 4_000_000;
    let start = Instant::now();
    let mut allowed = 0u64;
    for i in 0..n {
        let (s, d) = &pairs[i % pairs.len()];
        if policy.intention_for(black_box(s), black_box(d)).verdict == cordon::policy::Verdict::Allow {
            allowed += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "policy_decide_10000_intentions: {ns:.0} ns per decision ({} intentions parsed in {:.1} ms; {allowed} allowed)",
        policy.intentions().len(),
        parsed.as_secs_f64() * 1e3
    );
}
