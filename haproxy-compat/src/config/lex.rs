//! Splits one `haproxy.cfg` line into words the way HAProxy does: whitespace separates words,
//! `#` starts a comment, `\` escapes the next character, and single or double quotes group.

/// A line's words, or `Err(())` when a quote is left open.
pub(super) fn words(line: &str) -> Result<Vec<String>, ()> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                in_word = true;
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '#') => break,
            (None, '"' | '\'') => {
                in_word = true;
                quote = Some(c);
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err(());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn splits_quotes_escapes_and_comments() {
        assert_eq!(words("  bind :3219   # db").unwrap(), ["bind", ":3219"]);
        assert_eq!(
            words("acl a hdr(host) -i \"x y\" 'z#w'").unwrap(),
            ["acl", "a", "hdr(host)", "-i", "x y", "z#w"]
        );
        assert_eq!(words(r"errorfile a\ b\#c").unwrap(), ["errorfile", "a b#c"]);
        assert_eq!(words("# only a comment").unwrap(), Vec::<String>::new());
        assert_eq!(words("x \"\"").unwrap(), ["x", ""]);
        assert!(words("bind \"unterminated").is_err());
    }
}
