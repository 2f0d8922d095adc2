//! A service's flips on the report's focus view: the flip records of an audit log, as a data
//! block and a small script appended to the page, so a flip seen in the review can be found in
//! the audit log (its time, who, the preflight's verdict, the policy's hash after).
//!
//! Owns only this addition: the page's own script and layout are the report's. The script adds
//! a list under the focus view's heading after the page has drawn it, and writes text only
//! (`textContent`), so a name from the log never becomes markup.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::{Action, Record};

/// The page with the flips of `records` added to each service's focus view.
pub fn with_flips(html: &str, log: &Path, records: &[Record]) -> String {
    let mut by_service: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for r in records {
        if let Action::ModeFlip { service, from, to, preflight, forced, policy_after, .. } = &r.action {
            by_service.entry(service).or_default().push(json!({
                "time": r.time,
                "from": from,
                "to": to,
                "status": r.status.as_str(),
                "forced": forced,
                "ready": preflight.as_ref().map(|p| p.ready),
                "who": format!("{}@{}", r.actor.user, r.actor.host),
                "policy": policy_after,
            }));
        }
    }
    let data = json!({ "log": log.display().to_string(), "flips": by_service });
    let block = format!(
        "<script type=\"application/json\" id=\"cordon-flips\">{}</script>\n<script>{SCRIPT}</script>\n",
        script_safe(&data.to_string())
    );
    match html.rfind("</body>") {
        Some(at) => format!("{}{block}{}", &html[..at], &html[at..]),
        None => format!("{html}{block}"),
    }
}

/// JSON that cannot close a script element: `<`, `>`, `&` and the two JavaScript line
/// separators as `\u` escapes (JSON text only has them inside strings, where they mean the same).
fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Runs after the page's script (it is later in the page), on load and on every hash change.
const SCRIPT: &str = r##"(function () {
  var data = JSON.parse(document.getElementById("cordon-flips").textContent);
  function show() {
    var old = document.getElementById("focus-flips");
    if (old) old.remove();
    var key = "#service=", h = location.hash, focus = document.getElementById("focus");
    if (!focus || focus.hidden || h.indexOf(key) !== 0) return;
    var name;
    try { name = decodeURIComponent(h.slice(key.length)); } catch (e) { name = h.slice(key.length); }
    var flips = data.flips[name];
    if (!flips) return;
    var box = document.createElement("div");
    box.id = "focus-flips";
    var title = box.appendChild(document.createElement("h3"));
    title.textContent = "Flips of " + name + " in the audit log";
    var ul = box.appendChild(document.createElement("ul"));
    flips.forEach(function (f) {
      var li = ul.appendChild(document.createElement("li"));
      li.textContent = f.time + "  " + f.from + " \u2192 " + f.to + "  " + f.status +
        (f.ready === false ? ", preflight not ready" : f.ready ? ", preflight ready" : "") +
        (f.forced ? ", --force" : "") + "  by " + f.who + (f.policy ? "  policy " + f.policy.slice(0, 19) : "");
    });
    var how = box.appendChild(document.createElement("p"));
    how.className = "n";
    how.textContent = "cordon audit --audit-log " + data.log + " --service " + name;
    document.getElementById("focus-head").appendChild(box);
  }
  window.addEventListener("hashchange", show);
  show();
})();"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::RecordStatus;

    #[test]
    fn flips_are_added_to_the_page_and_no_name_closes_the_script() {
        let flip = Record::new(
            Action::ModeFlip {
                service: "db</script><script>alert(1)</script>".into(),
                from: "learn".into(),
                to: "enforce".into(),
                preflight: None,
                forced: true,
                policy: "p".into(),
                policy_before: "sha256:00".into(),
                policy_after: Some("sha256:11".into()),
            },
            RecordStatus::Success,
        );
        let page = with_flips("<html><body><main></main></body></html>", Path::new("a.jsonl"), &[flip]);
        assert!(page.ends_with("</script>\n</body></html>"), "{page}");
        assert_eq!(page.matches("</script>").count(), 2, "only the two elements' own ends: {page}");
        let start = page.find("id=\"cordon-flips\">").expect("the block") + 18;
        let json = &page[start..start + page[start..].find("</script>").expect("closed")];
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(v["flips"]["db</script><script>alert(1)</script>"][0]["forced"], true);
    }
}
