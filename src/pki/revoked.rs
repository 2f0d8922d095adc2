//! The revocation list as agents hold it: which leaf serials and which hosts the fleet no longer
//! lets in. `cordon ca revoke` writes it into the CA directory as `revoked.json`; the signing
//! service serves the same document at `GET /v1/revoked` and in every enrol and renew answer; an
//! agent keeps the last one it got in its tls dir (or reads its local CA's). Every copy is parsed
//! here, once, into [`Revocations`]:
//!
//! ```json
//! {"generated": "2026-12-06T18:00:00Z", "serials": ["1f2e..."], "hosts": ["web-3"],
//!  "reasons": {"web-3": "disk image leaked"}}
//! ```
//!
//! Unknown fields are ignored (a newer service may say more). Everything else is checked: a serial
//! is hex as [`serial_of`] writes it (at most 20 bytes, RFC 5280's limit), a host a
//! [`HostName`], the document at most [`MAX_BYTES`] and [`MAX_ENTRIES`] entries. A bad document
//! is refused whole with an error that names where it came from; whoever holds a set keeps it.
//!
//! Owns the format and the lookup. Must not decide anything: [`crate::policy::decide`] asks
//! [`Revocations::covers`].

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::HostName;

/// The name of the revocation list in a CA directory and in an agent's tls dir.
pub const FILE_NAME: &str = "revoked.json";
/// The largest document accepted, in bytes.
pub const MAX_BYTES: usize = 4 << 20;
/// The most serials and hosts accepted, together.
pub const MAX_ENTRIES: usize = 50_000;
/// The longest serial accepted, in hex digits (20 bytes).
const MAX_SERIAL_HEX: usize = 40;

/// Why a revocation list was refused. Never quotes a refused entry whole: it may be anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokedError {
    /// Larger than `MAX_BYTES` (4 MiB).
    #[error("{origin}: the revocation list is {size} bytes; at most {MAX_BYTES} are accepted")]
    TooLarge { origin: String, size: usize },
    /// Not JSON of the expected shape.
    #[error("{origin}: not a revocation list: {message}")]
    Syntax { origin: String, message: String },
    /// More than `MAX_ENTRIES` (50,000) serials and hosts.
    #[error("{origin}: {count} revoked serials and hosts; at most {MAX_ENTRIES} are accepted")]
    TooMany { origin: String, count: usize },
    /// A serial that is not 1 to 40 hex digits.
    #[error("{origin}: serials[{index}] is not a certificate serial (1 to 40 hex digits)")]
    BadSerial { origin: String, index: usize },
    /// A host that is not a host name.
    #[error("{origin}: hosts[{index}]: {error}")]
    BadHost { origin: String, index: usize, error: super::HostNameError },
    /// `generated` is not an RFC 3339 time.
    #[error("{origin}: generated is not an RFC 3339 time")]
    BadTime { origin: String },
}

/// The document itself, as `cordon ca revoke` writes it, the signing service serves it and
/// agents keep their copy. [`RevocationList::parse`] is the one reader of it; the signing
/// service's bookkeeping on it (`revoked_at`, the list in force) is in `pki::issuer::revoked`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// When the list was last written (RFC 3339); empty before anything was revoked.
    #[serde(default)]
    pub generated: String,
    /// Revoked serials, lower-case hex without leading zero bytes (as [`serial_of`] gives them).
    #[serde(default)]
    pub serials: Vec<String>,
    /// Revoked hosts: every leaf naming one of them (its DNS-name SAN) is refused.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Why, per serial or host, as the operator said.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
    /// When each host was revoked (unix seconds): lets a re-imaged host come back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked_at: BTreeMap<String, u64>,
}

impl RevocationList {
    /// Parses and checks a document: at most `MAX_BYTES` and `MAX_ENTRIES`, every serial hex
    /// (put in [`serial_of`]'s form), every host a [`HostName`], `generated` empty or RFC 3339.
    /// `origin` (a file, or the service's address) names it in errors; a bad document is refused
    /// whole.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<RevocationList, RevokedError> {
        let origin = || origin.to_string();
        if bytes.len() > MAX_BYTES {
            return Err(RevokedError::TooLarge { origin: origin(), size: bytes.len() });
        }
        let mut list: RevocationList = serde_json::from_slice(bytes)
            .map_err(|e| RevokedError::Syntax { origin: origin(), message: e.to_string() })?;
        let count = list.serials.len() + list.hosts.len();
        if count > MAX_ENTRIES {
            return Err(RevokedError::TooMany { origin: origin(), count });
        }
        for (index, s) in list.serials.iter_mut().enumerate() {
            *s = normal_serial(s).ok_or(RevokedError::BadSerial { origin: origin(), index })?;
        }
        for (index, h) in list.hosts.iter().enumerate() {
            HostName::new(h).map_err(|error| RevokedError::BadHost { origin: origin(), index, error })?;
        }
        if !list.generated.is_empty() && parse_time(&list.generated).is_none() {
            return Err(RevokedError::BadTime { origin: origin() });
        }
        Ok(list)
    }
}

/// A checked revocation list: the serials and hosts whose leaves no inbound lets in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    serials: HashSet<Box<str>>,
    hosts: HashSet<Box<str>>,
    /// When the signing service (or `ca revoke`) wrote it, if it said.
    generated: Option<SystemTime>,
    /// A fingerprint of the serials and hosts, independent of order: the same list read again is
    /// the same version, any change another. 0 for the empty list.
    version: u64,
}

impl Revocations {
    /// The empty list: nothing revoked.
    pub fn empty() -> Self {
        Revocations::default()
    }

    /// Parses and checks a document; `origin` (a file, or the service's address) names it in
    /// errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, RevokedError> {
        Ok(Revocations::of(&RevocationList::parse(bytes, origin)?))
    }

    /// The lookup sets of a checked list.
    pub fn of(list: &RevocationList) -> Self {
        let serials: HashSet<Box<str>> = list.serials.iter().map(|s| Box::from(s.as_str())).collect();
        let hosts: HashSet<Box<str>> = list.hosts.iter().map(|h| Box::from(h.as_str())).collect();
        let generated = parse_time(&list.generated);
        let version = fingerprint(&serials, &hosts);
        Revocations { serials, hosts, generated, version }
    }

    /// Reads `path`: the empty list when there is no such file, an error naming the file when it
    /// cannot be read or is refused.
    pub fn load(path: &Path) -> Result<Self, super::PkiError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Revocations::empty()),
            Err(source) => return Err(super::PkiError::Read { path: path.to_owned(), source }),
        };
        Revocations::parse(&bytes, &path.display().to_string())
            .map_err(|e| super::PkiError::BadFile { path: path.to_owned(), message: e.to_string() })
    }

    /// The list as JSON, sorted: what an agent writes as its copy (never the bytes it received).
    pub fn to_json(&self) -> Vec<u8> {
        let mut serials: Vec<String> = self.serials.iter().map(|s| s.to_string()).collect();
        let mut hosts: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        serials.sort_unstable();
        hosts.sort_unstable();
        let generated = self.generated.map(format_time).unwrap_or_default();
        let list = RevocationList { generated, serials, hosts, ..RevocationList::default() };
        let mut out = serde_json::to_vec_pretty(&list).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Whether a leaf with this serial (hex as [`serial_of`] gives it), held by `host`, is
    /// revoked: its serial is listed, or the host it names is.
    pub fn covers(&self, serial: &str, host: Option<&str>) -> bool {
        self.serials.contains(serial) || host.is_some_and(|h| self.hosts.contains(h))
    }

    /// Whether `serial` is listed; tells the two causes apart for people.
    pub fn has_serial(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// How many serials are listed.
    pub fn serial_count(&self) -> usize {
        self.serials.len()
    }

    /// How many hosts are listed.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// When the list was written by its source, if it said.
    pub fn generated(&self) -> Option<SystemTime> {
        self.generated
    }

    /// The list's version: equal for the same serials and hosts, 0 when nothing is revoked.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// A leaf's serial number as the revocation list writes it: lowercase hex without leading zero
/// bytes (DER may add one), as the signing service logs it.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(super::issuer::serial_hex(x509.raw_serial()))
}

/// A serial in the form [`serial_of`] gives: hex digits (colons between bytes allowed, as tools
/// print serials), lowercased, an even count with leading zero bytes dropped. None when it is not
/// hex, is longer than a serial can be (20 bytes) or is zero: one reader for the list's entries
/// and for what an operator types at `cordon ca revoke --serial`.
pub fn normal_serial(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > MAX_SERIAL_HEX || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let lower = digits.to_ascii_lowercase();
    let significant = lower.trim_start_matches('0');
    if significant.is_empty() {
        return None;
    }
    Some(if significant.len() % 2 == 1 { format!("0{significant}") } else { significant.to_string() })
}

fn fingerprint(serials: &HashSet<Box<str>>, hosts: &HashSet<Box<str>>) -> u64 {
    use sha2::{Digest, Sha256};
    if serials.is_empty() && hosts.is_empty() {
        return 0;
    }
    let mut all: Vec<String> = serials.iter().map(|s| format!("s:{s}")).collect();
    all.extend(hosts.iter().map(|h| format!("h:{h}")));
    all.sort_unstable();
    let mut hash = Sha256::new();
    for entry in &all {
        hash.update(entry.as_bytes());
        hash.update([0]);
    }
    let sum = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&sum[..8]);
    u64::from_be_bytes(first).max(1)
}

fn parse_time(t: &str) -> Option<SystemTime> {
    if t.is_empty() {
        return None;
    }
    let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(at))
}

fn format_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The list in force on this host, shared by the inbound listeners (through a watch channel, so a
/// change re-checks open connections) and `/status`.
#[derive(Debug)]
pub struct RevocationWatch {
    tx: tokio::sync::watch::Sender<Arc<Revocations>>,
    /// When the list in force was installed (loaded at start, or changed since).
    since: std::sync::Mutex<SystemTime>,
    /// Why the last read of the list was refused, until one succeeds.
    last_error: std::sync::Mutex<Option<String>>,
}

impl RevocationWatch {
    pub fn new(first: Revocations) -> Self {
        RevocationWatch {
            tx: tokio::sync::watch::Sender::new(Arc::new(first)),
            since: std::sync::Mutex::new(SystemTime::now()),
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// Records how the last read went: None when it succeeded, or why it was refused.
    pub fn note(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Why the last read was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The list in force.
    pub fn current(&self) -> Arc<Revocations> {
        self.tx.borrow().clone()
    }

    /// Follows the list in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Revocations>> {
        self.tx.subscribe()
    }

    /// Puts `new` in force when it differs from the list in force; whether it did.
    pub fn install(&self, new: Revocations) -> bool {
        let changed = self.tx.send_if_modified(|old| {
            let changed = **old != new;
            if changed {
                *old = Arc::new(new);
            }
            changed
        });
        if changed {
            *self.since.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
        }
        changed
    }

    /// When the list in force was installed.
    pub fn since(&self) -> SystemTime {
        *self.since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_list_is_read_and_looked_up() {
        let doc = br#"{"generated":"2026-12-06T18:00:00Z","serials":["0ABC","1f2e"],
            "hosts":["web-3.dc1"],"reasons":{"web-3.dc1":"stolen"},"from_the_future":1}"#;
        let r = Revocations::parse(doc, "test").unwrap();
        assert_eq!((r.serial_count(), r.host_count()), (2, 1));
        assert!(r.covers("0abc", None), "hex is compared lowercase, as serial_of writes it");
        assert!(r.covers("1f2e", Some("web-1")));
        assert!(r.covers("99", Some("web-3.dc1")), "a revoked host covers every leaf naming it");
        assert!(!r.covers("99", Some("web-1")));
        assert!(!r.covers("99", None));
        assert!(r.generated().is_some());
        // Written back and read again: the same list, the same version.
        let again = Revocations::parse(&r.to_json(), "copy").unwrap();
        assert_eq!(again, r);
        assert_ne!(r.version(), 0);
        assert_eq!(Revocations::parse(b"{}", "empty").unwrap().version(), 0);
    }

    #[test]
    fn serials_take_the_form_serial_of_gives() {
        assert_eq!(normal_serial("00ff").as_deref(), Some("ff"));
        assert_eq!(normal_serial("FF").as_deref(), Some("ff"));
        assert_eq!(normal_serial("abc").as_deref(), Some("0abc"));
        assert_eq!(crate::pki::issuer::serial_hex(&[0, 0x0a, 0xbc]), "0abc");
        assert_eq!(normal_serial("0000"), None);
        assert_eq!(normal_serial("0"), None, "zero is no serial: it would be written as an empty entry");
        assert_eq!(normal_serial("00:1A:2b").as_deref(), Some("1a2b"), "as openssl prints serials");
        assert_eq!(normal_serial(""), None);
        assert_eq!(normal_serial("xyz"), None);
        assert_eq!(normal_serial(&"a".repeat(41)), None);
    }

    #[test]
    fn bad_lists_are_refused_whole_naming_the_source() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"serials":["12","zz"]}"#, "serials[1]"),
            (br#"{"hosts":["ok","bad host\u001b[31m"]}"#, "hosts[1]"),
            (br#"{"serials":"12"}"#, "not a revocation list"),
            (br#"{"generated":"yesterday"}"#, "generated"),
            (b"not json", "not a revocation list"),
        ];
        assert!(!cases.is_empty());
        for (doc, says) in cases {
            let e = Revocations::parse(doc, "ca/revoked.json").unwrap_err().to_string();
            assert!(e.starts_with("ca/revoked.json: "), "{e}");
            assert!(e.contains(says), "{e}");
            assert!(!e.contains('\u{1b}'), "a refusal never carries the hostile text: {e:?}");
        }
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("{i:x}")).collect();
        let doc = serde_json::to_vec(&serde_json::json!({ "serials": many })).unwrap();
        assert!(matches!(Revocations::parse(&doc, "x"), Err(RevokedError::TooMany { .. })));
        let big = vec![b' '; MAX_BYTES + 1];
        assert!(matches!(Revocations::parse(&big, "x"), Err(RevokedError::TooLarge { .. })));
    }

    #[test]
    fn a_missing_file_is_the_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Revocations::load(&dir.path().join(FILE_NAME)).unwrap(), Revocations::empty());
        std::fs::write(dir.path().join(FILE_NAME), b"{").unwrap();
        let e = Revocations::load(&dir.path().join(FILE_NAME)).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME), "{e}");
    }

    #[test]
    fn the_watch_signals_changes_only() {
        let w = RevocationWatch::new(Revocations::empty());
        let rx = w.subscribe();
        assert!(!w.install(Revocations::empty()));
        assert!(!rx.has_changed().unwrap());
        assert!(w.install(Revocations::parse(br#"{"hosts":["h"]}"#, "t").unwrap()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(w.current().host_count(), 1);
    }
}
