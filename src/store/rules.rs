//! What the ingest service accepts from a host: every value checked (names, enums, counters,
//! times), and the evidence rules that say which rows a shipping identity may speak for.
//!
//! The rule, once: a host speaks only for the identity its leaf proves. An edge row is *seen*
//! when that identity is the row's destination (an inbound of it recorded the call) and
//! *claimed* when it is the row's source (the caller's own record or its imported logs); any
//! other edge row is refused. A declaration is accepted only for the shipping identity. Every
//! accepted row is stamped with the shipping host (the store's key, so a host replaces only its
//! own rows) and identity. The same limits are CHECK constraints in the store
//! ([`super::schema`]), so a row that gets past one still meets the other.
//!
//! Pure: no I/O, no clock (the caller passes `now`), so the table test below covers it.

use crate::ledger::spool::{Batch, DECLARER, EDGE_HOUR, IMPORTED_PREFIX, Table, Values};

/// Longest name (service, source, host, declared service) the store holds, in bytes.
pub const MAX_NAME: usize = 253;
/// Largest counter (connections, bytes) one row may hold: 2^50, a petabyte an hour.
pub const MAX_COUNTER: i64 = 1 << 50;
/// How far ahead of the service's clock a bucket or a time may be (clock skew between hosts).
pub const SKEW_MS: i64 = 15 * 60 * 1000;
/// Longest file name an `imported_prefix` row may carry.
pub const MAX_FILE: usize = 4096;
/// Most services one declaration may list.
pub const MAX_SERVICES: usize = 10_000;
/// What a row shipped with operator credentials (`cordon ship --to postgres://`) is stamped with.
pub const OPERATOR: &str = "operator";

/// How an accepted edge row came to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    /// Recorded by the destination's own inbound, or shipped by an operator.
    Seen,
    /// Only the source says so.
    Claimed,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::Seen => "seen",
            Evidence::Claimed => "claimed",
        }
    }
}

/// Why a row was refused; the label is the `cause` of `/metrics` and of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// An edge row whose source and destination are both other identities than the shipper's.
    NotYours,
    /// A declaration for another identity than the shipper's.
    OtherIdentity,
    /// A name outside the service-name rule or longer than [`MAX_NAME`].
    BadName,
    /// A mode, verdict, identification or origin cordon does not write.
    UnknownValue,
    /// A negative counter, one above [`MAX_COUNTER`], or first seen after last seen.
    BadCounter,
    /// A bucket or time in the future beyond [`SKEW_MS`], or before 1970.
    BadTime,
    /// A table hosts do not ship through the service.
    Table,
    /// A second row with the key of an earlier one in the same request (once stamped with the
    /// shipping host): one statement cannot write a key twice.
    Duplicate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotYours => "not_yours",
            Refusal::OtherIdentity => "other_identity",
            Refusal::BadName => "bad_name",
            Refusal::UnknownValue => "unknown_value",
            Refusal::BadCounter => "bad_counter",
            Refusal::BadTime => "bad_time",
            Refusal::Table => "table",
            Refusal::Duplicate => "duplicate",
        }
    }

    /// Every cause, for zero-valued metrics.
    pub const ALL: [Refusal; 8] = [
        Refusal::NotYours,
        Refusal::OtherIdentity,
        Refusal::BadName,
        Refusal::UnknownValue,
        Refusal::BadCounter,
        Refusal::BadTime,
        Refusal::Table,
        Refusal::Duplicate,
    ];
}

/// Who shipped a batch: the host and identity the leaf names, or the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shipper {
    Host { host: String, identity: String },
    Operator,
}

/// The rows of a batch that were accepted, stamped, and the causes of the others (one entry per
/// refused row).
#[derive(Debug)]
pub struct Checked {
    pub batch: Batch,
    /// Per accepted row: the identity that shipped it ([`OPERATOR`] for an operator).
    pub shipper: Vec<String>,
    /// Per accepted row of `edge_hour`: [`Evidence::as_str`]; empty for other tables.
    pub evidence: Vec<String>,
    pub refused: Vec<Refusal>,
}

/// A service name (`[A-Za-z0-9._-]`, 1 to 253 bytes, not `.` or `..`).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A caller: a service name or `ip:` and an address.
pub fn is_source(s: &str) -> bool {
    match s.strip_prefix("ip:") {
        Some(ip) => s.len() <= MAX_NAME && ip.parse::<std::net::IpAddr>().is_ok(),
        None => is_name(s),
    }
}

fn counter(n: i64) -> bool {
    (0..=MAX_COUNTER).contains(&n)
}

/// Checks every row of `batch` as shipped by `who` at `now_ms` (unix ms): refused rows are left
/// out and counted by cause; accepted rows get `who`'s host in their `host` column.
pub fn check(batch: &Batch, who: &Shipper, now_ms: i64) -> Checked {
    let table = batch.table;
    let n = batch.len();
    let mut keep = Vec::with_capacity(n);
    let mut shipper = Vec::with_capacity(n);
    let mut evidence = Vec::new();
    let mut refused = Vec::new();
    let cols = Cols { batch };
    let (host, identity) = match who {
        Shipper::Host { host, identity } => (Some(host.as_str()), identity.as_str()),
        Shipper::Operator => (None, OPERATOR),
    };
    let mut keys = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        // By name: the tables are constants, so their addresses are not theirs to compare.
        let verdict = match table.name {
            n if n == EDGE_HOUR.name => edge_row(&cols, i, who, now_ms).map(Some),
            n if n == DECLARER.name => declarer_row(&cols, i, who, now_ms).map(|()| None),
            n if n == IMPORTED_PREFIX.name => prefix_row(&cols, i, now_ms).map(|()| None),
            _ => Err(Refusal::Table),
        };
        let verdict = verdict.and_then(|ev| {
            if keys.insert(key_of(batch, i, host)) { Ok(ev) } else { Err(Refusal::Duplicate) }
        });
        match verdict {
            Ok(ev) => {
                keep.push(i);
                shipper.push(identity.to_owned());
                if let Some(ev) = ev {
                    evidence.push(ev.as_str().to_owned());
                }
            }
            Err(cause) => refused.push(cause),
        }
    }
    let mut out = select(batch, &keep);
    if let Some(host) = host
        && let Some(pos) = table.columns.iter().position(|c| c.name == "host")
        && let Some(Values::Text(v)) = out.columns.get_mut(pos)
    {
        v.iter_mut().for_each(|h| *h = host.to_owned());
    }
    Checked { batch: out, shipper, evidence, refused }
}

/// Row `i`'s key as it will be stored (`host` as stamped), one text.
fn key_of(batch: &Batch, i: usize, host: Option<&str>) -> String {
    let mut key = String::new();
    for (c, v) in batch.table.columns.iter().zip(&batch.columns) {
        if c.combine != crate::ledger::spool::Combine::Key {
            continue;
        }
        match v {
            Values::Text(_) if c.name == "host" && host.is_some() => key.push_str(host.unwrap_or("")),
            Values::Text(v) => key.push_str(v.get(i).map(String::as_str).unwrap_or("")),
            Values::Int(v) => key.push_str(&v.get(i).copied().unwrap_or(0).to_string()),
            Values::Bytes(v) => {
                v.get(i).iter().flat_map(|b| b.iter()).for_each(|b| key.push_str(&format!("{b:02x}")))
            }
        }
        key.push('\0');
    }
    key
}

/// Column access by name; a missing column or one of the wrong type reads as a refused value.
struct Cols<'a> {
    batch: &'a Batch,
}

impl Cols<'_> {
    fn values(&self, name: &str) -> Option<&Values> {
        let i = self.batch.table.columns.iter().position(|c| c.name == name)?;
        self.batch.columns.get(i)
    }
    fn text(&self, name: &str, i: usize) -> Option<&str> {
        match self.values(name)? {
            Values::Text(v) => v.get(i).map(String::as_str),
            _ => None,
        }
    }
    fn int(&self, name: &str, i: usize) -> Option<i64> {
        match self.values(name)? {
            Values::Int(v) => v.get(i).copied(),
            _ => None,
        }
    }
    fn bytes(&self, name: &str, i: usize) -> Option<&[u8]> {
        match self.values(name)? {
            Values::Bytes(v) => v.get(i).map(Vec::as_slice),
            _ => None,
        }
    }
}

fn time_ok(ms: i64, now_ms: i64) -> Result<(), Refusal> {
    if (0..=now_ms.saturating_add(SKEW_MS)).contains(&ms) { Ok(()) } else { Err(Refusal::BadTime) }
}

fn edge_row(c: &Cols<'_>, i: usize, who: &Shipper, now_ms: i64) -> Result<Evidence, Refusal> {
    let text = |n| c.text(n, i).ok_or(Refusal::UnknownValue);
    let int = |n| c.int(n, i).ok_or(Refusal::BadCounter);
    let (source, destination) = (text("source")?, text("destination")?);
    if !is_source(source) || !is_name(destination) {
        return Err(Refusal::BadName);
    }
    if crate::policy::Identified::parse(text("identified")?).is_none()
        || !matches!(text("mode")?, "learn" | "enforce")
        || !matches!(text("verdict")?, "allow" | "deny")
    {
        return Err(Refusal::UnknownValue);
    }
    for counter_column in ["connections", "bytes_to_destination", "bytes_to_source"] {
        if !counter(int(counter_column)?) {
            return Err(Refusal::BadCounter);
        }
    }
    let hour = int("hour")?;
    let (first, last) = (int("first_seen")?, int("last_seen")?);
    if hour < 0 || hour > now_ms.saturating_add(SKEW_MS).div_euclid(3_600_000) {
        return Err(Refusal::BadTime);
    }
    time_ok(first, now_ms)?;
    time_ok(last, now_ms)?;
    if first > last {
        return Err(Refusal::BadCounter);
    }
    match who {
        Shipper::Operator => Ok(Evidence::Seen),
        Shipper::Host { identity, .. } if identity == destination => Ok(Evidence::Seen),
        Shipper::Host { identity, .. } if identity == source => Ok(Evidence::Claimed),
        Shipper::Host { .. } => Err(Refusal::NotYours),
    }
}

fn declarer_row(c: &Cols<'_>, i: usize, who: &Shipper, now_ms: i64) -> Result<(), Refusal> {
    let identity = c.text("identity", i).ok_or(Refusal::BadName)?;
    if !is_name(identity) {
        return Err(Refusal::BadName);
    }
    if let Shipper::Host { identity: mine, .. } = who
        && mine != identity
    {
        return Err(Refusal::OtherIdentity);
    }
    if crate::ledger::DeclarationOrigin::parse(c.text("origin", i).unwrap_or("")).is_none() {
        return Err(Refusal::UnknownValue);
    }
    time_ok(c.int("declared_at", i).ok_or(Refusal::BadTime)?, now_ms)?;
    let services = c.text("services", i).ok_or(Refusal::BadName)?;
    if services.split('\n').filter(|s| !s.is_empty()).count() > MAX_SERVICES
        || !services.split('\n').filter(|s| !s.is_empty()).all(is_name)
    {
        return Err(Refusal::BadName);
    }
    Ok(())
}

fn prefix_row(c: &Cols<'_>, i: usize, now_ms: i64) -> Result<(), Refusal> {
    let file = c.text("file", i).ok_or(Refusal::BadName)?;
    if file.len() > MAX_FILE || file.chars().any(char::is_control) {
        return Err(Refusal::BadName);
    }
    if c.bytes("sha256", i).map(<[u8]>::len) != Some(32) {
        return Err(Refusal::UnknownValue);
    }
    for n in ["len", "lines"] {
        if !c.int(n, i).is_some_and(counter) {
            return Err(Refusal::BadCounter);
        }
    }
    time_ok(c.int("imported_at", i).ok_or(Refusal::BadTime)?, now_ms)
}

/// The rows `keep` of `batch`, in order.
pub(crate) fn select(batch: &Batch, keep: &[usize]) -> Batch {
    fn pick<T: Clone>(v: &[T], keep: &[usize]) -> Vec<T> {
        keep.iter().filter_map(|&i| v.get(i).cloned()).collect()
    }
    let columns = batch
        .columns
        .iter()
        .map(|v| match v {
            Values::Text(v) => Values::Text(pick(v, keep)),
            Values::Int(v) => Values::Int(pick(v, keep)),
            Values::Bytes(v) => Values::Bytes(pick(v, keep)),
        })
        .collect();
    Batch::from_columns(batch.table, columns)
}

/// Whether `batch`'s columns have the kinds and the one length its table says (a body that
/// does not is refused whole).
pub fn well_formed(table: &Table, columns: &[Values]) -> bool {
    use crate::ledger::spool::Kind;
    if columns.len() != table.columns.len() {
        return false;
    }
    let len = |v: &Values| match v {
        Values::Text(v) => v.len(),
        Values::Int(v) => v.len(),
        Values::Bytes(v) => v.len(),
    };
    let first = columns.first().map(len).unwrap_or(0);
    table.columns.iter().zip(columns).all(|(c, v)| {
        len(v) == first
            && matches!(
                (c.kind, v),
                (Kind::Text | Kind::TextSet, Values::Text(_))
                    | (Kind::Int, Values::Int(_))
                    | (Kind::Bytes, Values::Bytes(_))
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;
    const HOUR: i64 = NOW / 3_600_000;

    fn edge(source: &str, destination: &str, mode: &str, connections: i64, hour: i64) -> Batch {
        let t = |s: &str| Values::Text(vec![s.to_owned()]);
        let n = |v: i64| Values::Int(vec![v]);
        Batch::from_columns(
            &EDGE_HOUR,
            vec![
                t("claimed-host"),
                n(hour),
                t(source),
                t(destination),
                t("mtls"),
                t(mode),
                t("allow"),
                n(connections),
                n(10),
                n(10),
                n(hour * 3_600_000),
                n(hour * 3_600_000 + 1),
            ],
        )
    }

    fn host(identity: &str) -> Shipper {
        Shipper::Host { host: "web-1".into(), identity: identity.into() }
    }

    #[test]
    fn every_edge_row_is_checked_and_judged() {
        let long = "a".repeat(70_000);
        let cases: &[(Batch, Shipper, Result<Evidence, Refusal>)] = &[
            (edge("web", "db", "learn", 5, HOUR), host("db"), Ok(Evidence::Seen)),
            (edge("web", "db", "learn", 5, HOUR), host("web"), Ok(Evidence::Claimed)),
            (edge("web", "db", "learn", 5, HOUR), Shipper::Operator, Ok(Evidence::Seen)),
            (edge("ip:10.0.0.7", "db", "learn", 5, HOUR), host("db"), Ok(Evidence::Seen)),
            (edge("attacker", "db", "learn", 5, HOUR), host("web"), Err(Refusal::NotYours)),
            (edge("web", "db", "learn", 5, HOUR), host("attacker"), Err(Refusal::NotYours)),
            (edge("web", "db", "learn", -5, HOUR), host("db"), Err(Refusal::BadCounter)),
            (edge("web", "db", "learn", i64::MAX, HOUR), host("db"), Err(Refusal::BadCounter)),
            (edge("web", "db", "bogus", 5, HOUR), host("db"), Err(Refusal::UnknownValue)),
            (edge(&long, "db", "learn", 5, HOUR), host("db"), Err(Refusal::BadName)),
            (edge("web\u{1b}[2J", "db", "learn", 5, HOUR), host("db"), Err(Refusal::BadName)),
            (edge("web", "db", "learn", 5, HOUR + 24 * 3650), host("db"), Err(Refusal::BadTime)),
            (edge("web", "db", "learn", 5, -1), host("db"), Err(Refusal::BadTime)),
        ];
        for (i, (batch, who, want)) in cases.iter().enumerate() {
            let got = check(batch, who, NOW);
            match want {
                Ok(ev) => {
                    assert_eq!(got.batch.len(), 1, "case {i}: {:?}", got.refused);
                    assert_eq!(got.evidence, vec![ev.as_str().to_owned()], "case {i}");
                }
                Err(cause) => {
                    assert_eq!(got.batch.len(), 0, "case {i}");
                    assert_eq!(got.refused, vec![*cause], "case {i}");
                }
            }
        }
    }

    #[test]
    fn a_key_twice_in_one_request_is_refused_once_stamped() {
        let mut b = edge("web", "db", "learn", 5, HOUR);
        for v in &mut b.columns {
            match v {
                Values::Text(v) => {
                    v.push(if v[0] == "claimed-host" { "other-host".into() } else { v[0].clone() })
                }
                Values::Int(v) => v.push(v[0]),
                Values::Bytes(v) => v.push(v[0].clone()),
            }
        }
        // Two hosts named, one host stamped: the same key twice.
        let got = check(&b, &host("db"), NOW);
        assert_eq!((got.batch.len(), got.refused.clone()), (1, vec![Refusal::Duplicate]));
        // As the operator, the hosts stay as named: two keys.
        assert_eq!(check(&b, &Shipper::Operator, NOW).batch.len(), 2);
    }

    #[test]
    fn accepted_rows_carry_the_shipping_host_not_the_one_they_name() {
        let got = check(&edge("web", "db", "learn", 5, HOUR), &host("db"), NOW);
        assert_eq!(got.batch.columns[0], Values::Text(vec!["web-1".into()]));
        assert_eq!(got.shipper, vec!["db".to_owned()]);
        let got = check(&edge("web", "db", "learn", 5, HOUR), &Shipper::Operator, NOW);
        assert_eq!(got.batch.columns[0], Values::Text(vec!["claimed-host".into()]));
    }

    #[test]
    fn a_declaration_only_for_the_shipping_identity_and_not_dated_ahead() {
        let decl = |identity: &str, at: i64| {
            Batch::from_columns(
                &DECLARER,
                vec![
                    Values::Text(vec!["h".into()]),
                    Values::Text(vec![identity.into()]),
                    Values::Text(vec!["cordon.toml".into()]),
                    Values::Int(vec![at]),
                    Values::Text(vec!["db\nqueue".into()]),
                ],
            )
        };
        assert!(check(&decl("web", NOW), &host("web"), NOW).refused.is_empty());
        assert_eq!(check(&decl("web", NOW), &host("attacker"), NOW).refused, vec![Refusal::OtherIdentity]);
        let ten_years = NOW + 3650 * 86_400_000;
        assert_eq!(check(&decl("web", ten_years), &host("web"), NOW).refused, vec![Refusal::BadTime]);
    }

    #[test]
    fn malformed_bodies_are_told_apart() {
        let good = edge("web", "db", "learn", 5, HOUR);
        assert!(well_formed(&EDGE_HOUR, &good.columns));
        let mut short = good.columns.clone();
        short.pop();
        assert!(!well_formed(&EDGE_HOUR, &short));
        let mut wrong = good.columns.clone();
        wrong[1] = Values::Text(vec!["x".into()]);
        assert!(!well_formed(&EDGE_HOUR, &wrong));
    }
}
