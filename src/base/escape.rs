//! How a name from outside is shown: one function per output kind, used by every place that
//! prints a name.
//!
//! Names reach cordon's output from ledger files, the fleet store, discovery files and policies,
//! and any of them may come from a host an attacker controls. Whatever a name holds, it must not
//! drive the reader's terminal (escape sequences), start a line of its own (a newline in a TOML
//! comment would become live TOML that `cordon check` honours), close a quoted string (DOT) or
//! open a tag (HTML). Valid names (`[A-Za-z0-9._-]`, `ip:` addresses) pass through unchanged;
//! only what a valid name never holds is rewritten, so the escaping costs nothing in the common
//! case and never hides a real name.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must never reach a terminal or a line-oriented format as itself: C0 and C1
/// controls (newline, carriage return, escape, DEL ...) and the Unicode line and paragraph
/// separators and bidirectional overrides, which some viewers treat as line breaks or use to
/// reorder what is shown.
fn is_hazard(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}')
        || matches!(c, '\u{2066}'..='\u{2069}')
}

/// Rewrites the characters `escape` returns `Some` for; borrows when there are none.
fn rewrite(s: &str, escape: impl Fn(char) -> Option<String>) -> Cow<'_, str> {
    if !s.chars().any(|c| escape(c).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match escape(c) {
            Some(e) => out.push_str(&e),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `\u{1b}` for a hazardous character, as Rust writes it.
fn unicode_escape(c: char) -> String {
    let mut s = String::new();
    let _ = write!(s, "\\u{{{:x}}}", u32::from(c));
    s
}

/// For terminal text (tables, messages, `# ` comments of any line-oriented format): control and
/// line-breaking characters become `\u{..}`, and so does a backslash that could otherwise be
/// mistaken for the start of one, so the shown name maps back to exactly one real name. The
/// result never holds a newline.
pub fn text(s: &str) -> Cow<'_, str> {
    rewrite(s, |c| match c {
        '\\' => Some("\\\\".to_owned()),
        c if is_hazard(c) => Some(unicode_escape(c)),
        _ => None,
    })
}

/// For one cell of a whitespace-separated table: as [`text`], and a space or tab becomes
/// `\u{20}` / `\u{9}`, so the row still splits back into its columns.
pub fn cell(s: &str) -> Cow<'_, str> {
    rewrite(s, |c| match c {
        '\\' => Some("\\\\".to_owned()),
        c if is_hazard(c) || c.is_whitespace() => Some(unicode_escape(c)),
        _ => None,
    })
}

/// For the inside of a TOML comment: as [`text`], so a name can never end the comment and write
/// a live line of TOML after it.
pub fn toml_comment(s: &str) -> Cow<'_, str> {
    text(s)
}

/// A DOT (Graphviz) quoted string, quotes included: `"` and `\` are escaped, control and
/// line-breaking characters written as `\u{..}` text.
pub fn dot_quoted(s: &str) -> String {
    let inner = rewrite(s, |c| match c {
        '"' => Some("\\\"".to_owned()),
        '\\' => Some("\\\\".to_owned()),
        c if is_hazard(c) => Some(format!("\\{}", unicode_escape(c))),
        _ => None,
    });
    format!("\"{inner}\"")
}

/// For HTML text and attribute values: `& < > " '` as entities, control and line-breaking
/// characters as visible `\u{..}` text.
pub fn html(s: &str) -> Cow<'_, str> {
    rewrite(s, |c| match c {
        '&' => Some("&amp;".to_owned()),
        '<' => Some("&lt;".to_owned()),
        '>' => Some("&gt;".to_owned()),
        '"' => Some("&quot;".to_owned()),
        '\'' => Some("&#39;".to_owned()),
        c if is_hazard(c) => Some(unicode_escape(c)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_pass_unchanged_and_borrowed() {
        for name in ["db", "web-frontend", "api.v2", "ip:10.0.0.7", "ip:::1"] {
            assert!(matches!(text(name), Cow::Borrowed(n) if n == name));
            assert!(matches!(html(name), Cow::Borrowed(n) if n == name));
            assert_eq!(dot_quoted(name), format!("\"{name}\""));
        }
    }

    #[test]
    fn hostile_names_cannot_break_out() {
        let evil = "db\n[[intention]]\r\u{1b}[2J\u{2028}\u{202e}\"<b>&'\\";
        for shown in [text(evil).into_owned(), toml_comment(evil).into_owned(), html(evil).into_owned()] {
            assert!(!shown.chars().any(is_hazard), "{shown:?}");
        }
        assert_eq!(text("a\nb"), "a\\u{a}b");
        assert_eq!(text("a\\u{a}b"), "a\\\\u{a}b", "an escape can be told from a real backslash");
        assert_eq!(dot_quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\\\u{a}d\"");
        assert_eq!(html("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
        let dot = dot_quoted(evil);
        let inner = &dot[1..dot.len() - 1];
        // Every quote inside is escaped: the string ends only at its last character.
        let mut escaped = false;
        for c in inner.chars() {
            assert!(escaped || c != '"', "{dot}");
            escaped = !escaped && c == '\\';
        }
    }
}
