//! The syslog prefix in front of an HAProxy message, if there is one.
//!
//! Accepted: RFC 3164 as HAProxy sends it (`<134>Nov 22 14:05:01 haproxy[1234]: `), as syslog
//! daemons write it to files (`Nov 22 14:05:01 web-1 haproxy[1234]: `, with or without `<pri>`),
//! rsyslog's RFC 3339 stamps (`2026-11-22T14:05:01.123+00:00 web-1 haproxy[1234]: `), RFC 5424
//! (`<134>1 2026-11-22T14:05:01Z web-1 haproxy 1234 - - `), a bare tag (`haproxy[1234]: `), and
//! nothing at all (`log stdout format raw`).

use super::{Field, LogError, SyslogTime, next_word};

/// What the syslog prefix said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyslogHeader<'a> {
    /// `<pri>`, when the line kept it.
    pub priority: Option<u8>,
    pub time: Option<SyslogTime>,
    /// The host that wrote the line, when the prefix names one.
    pub hostname: Option<&'a str>,
    /// The program, e.g. `haproxy`.
    pub tag: Option<&'a str>,
    pub pid: Option<u32>,
}

/// Splits a line into its syslog header (if any) and the HAProxy message.
pub(super) fn split(line: &str) -> Result<(Option<SyslogHeader<'_>>, &str), LogError> {
    let bad = || LogError::bad(Field::SyslogHeader, line);
    let mut rest = line;
    let mut h = SyslogHeader { priority: None, time: None, hostname: None, tag: None, pid: None };
    if let Some(after) = rest.strip_prefix('<') {
        let end = after.find('>').filter(|e| (1..=3).contains(e)).ok_or_else(bad)?;
        h.priority = Some(after[..end].parse::<u8>().ok().filter(|p| *p <= 191).ok_or_else(bad)?);
        rest = &after[end + 1..];
        if let Some(v1) = rest.strip_prefix("1 ") {
            return rfc5424(v1, h).ok_or_else(bad);
        }
    }
    if let Some(t) = rest.get(..15).and_then(SyslogTime::parse_rfc3164) {
        h.time = Some(t);
        rest = &rest[15..];
    } else if let Some(t) = rest.split(' ').next().and_then(SyslogTime::parse_rfc3339) {
        h.time = Some(t);
        rest = rest.split_once(' ').map_or("", |(_, r)| r);
    }
    let had_stamp = h.priority.is_some() || h.time.is_some();
    let mut probe = rest;
    let Some(first) = next_word(&mut probe) else {
        return if had_stamp { Err(bad()) } else { Ok((None, rest)) };
    };
    if let Some((tag, pid)) = tag(first) {
        (h.tag, h.pid) = (Some(tag), pid);
        return Ok((Some(h), probe));
    }
    if !had_stamp {
        return Ok((None, rest));
    }
    h.hostname = Some(first);
    let (tag, pid) = next_word(&mut probe).and_then(tag).ok_or_else(bad)?;
    (h.tag, h.pid) = (Some(tag), pid);
    Ok((Some(h), probe))
}

/// `haproxy[1234]:` or `haproxy:`.
fn tag(word: &str) -> Option<(&str, Option<u32>)> {
    let word = word.strip_suffix(':')?;
    let (name, pid) = match word.split_once('[') {
        Some((name, pid)) => (name, Some(pid.strip_suffix(']')?.parse::<u32>().ok()?)),
        None => (word, None),
    };
    let ok = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
    ok.then_some((name, pid))
}

/// After `<pri>1 `: TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG.
fn rfc5424<'a>(mut rest: &'a str, mut h: SyslogHeader<'a>) -> Option<(Option<SyslogHeader<'a>>, &'a str)> {
    let nil = |w: &'a str| (w != "-").then_some(w);
    let stamp = next_word(&mut rest)?;
    h.time = match stamp {
        "-" => None,
        s => Some(SyslogTime::parse_rfc3339(s)?),
    };
    h.hostname = nil(next_word(&mut rest)?);
    h.tag = nil(next_word(&mut rest)?);
    h.pid = nil(next_word(&mut rest)?).and_then(|p| p.parse().ok());
    next_word(&mut rest)?; // MSGID
    rest = rest.trim_start_matches(' ');
    if let Some(r) = rest.strip_prefix('-') {
        rest = r;
    } else {
        // One or more [id param="value" ...] elements; a `]` inside a value is escaped as `\]`.
        while rest.starts_with('[') {
            let mut escaped = false;
            let end = rest.char_indices().find(|&(_, c)| {
                let close = c == ']' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })?;
            rest = &rest[end.0 + 1..];
        }
    }
    let msg = rest.strip_prefix(' ').unwrap_or(rest);
    Some((Some(h), msg.strip_prefix('\u{feff}').unwrap_or(msg)))
}
