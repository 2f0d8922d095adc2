//! One readiness: `cordon diff --format json`, the report's data block and `cordon mode`'s
//! preflight, run as the built binary, must agree on every service of a ledger.

use std::path::Path;
use std::process::Output;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn cordon(args: &[&str]) -> Output {
    super::cordon(args)
}

/// The readiness the report's data block gives each service: (ready, summary) by name.
fn report_readiness(html: &str) -> std::collections::HashMap<String, (bool, String)> {
    let from = html.find(r#"<script type="application/json" id="cordon-data">"#).unwrap();
    let from = from + html[from..].find('>').unwrap() + 1;
    let to = from + html[from..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[from..to]).unwrap();
    let names = data["names"].as_array().unwrap();
    data["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = names[s[0].as_u64().unwrap() as usize].as_str().unwrap().to_owned();
            (name, (s[2] == 1, s[4].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// `diff --format json`, `report` and `mode`'s preflight agree on every service of a ledger.
/// `sample`: the services `mode` is asked about (one process each); it must hold ready and not-ready
/// ones.
pub fn one_readiness(db: &Path, policy: &Path, min_history: &str, sample: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (db_s, p_s) = (db.to_str().unwrap(), policy.to_str().unwrap());
    let diff =
        cordon(&["diff", "--db", db_s, "--policy", p_s, "--format", "json", "--min-history", min_history]);
    assert!(diff.status.success(), "{}", text(&diff));
    let diff: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(diff["format"], "cordon-diff/1");
    let services = diff["services"].as_array().unwrap();
    assert!(!services.is_empty());
    let html_path = dir.path().join("report.html");
    let html = cordon(&[
        "report",
        "--db",
        db_s,
        "--policy",
        p_s,
        "--out",
        html_path.to_str().unwrap(),
        "--min-history",
        min_history,
    ]);
    assert!(html.status.success(), "{}", text(&html));
    let report = report_readiness(&std::fs::read_to_string(&html_path).unwrap());
    for s in services {
        let name = s["service"].as_str().unwrap();
        let (ready, summary) = &report[name];
        assert_eq!(
            (s["ready"].as_bool().unwrap(), s["summary"].as_str().unwrap()),
            (*ready, summary.as_str()),
            "{name}"
        );
        assert!(s["history"].is_null() || s["history"]["days"].is_f64(), "{s}");
    }
    let mut kinds = std::collections::BTreeSet::new();
    for name in sample {
        let s =
            services.iter().find(|s| s["service"] == *name).unwrap_or_else(|| panic!("{name} not in diff"));
        let copy = dir.path().join("policy.toml");
        std::fs::copy(policy, &copy).unwrap();
        let out = cordon(&[
            "mode",
            "--policy",
            copy.to_str().unwrap(),
            name,
            "enforce",
            "--db",
            db_s,
            "--min-history",
            min_history,
        ]);
        let said = text(&out);
        let ready = s["ready"].as_bool().unwrap();
        kinds.insert(ready);
        assert_eq!(
            out.status.code(),
            Some(if ready { 0 } else { 1 }),
            "{name}: diff says {s}\nmode says {said}"
        );
        for b in s["blockers"].as_array().unwrap() {
            if let Some(source) = b["caller"]["source"].as_str() {
                assert!(said.contains(source), "{name}: {source} blocks in diff, not in mode: {said}");
            } else {
                assert!(said.contains("less than --min-history"), "{name}: {said}");
            }
        }
    }
    assert_eq!(kinds.len(), 2, "the sample holds ready and not-ready services");
}
