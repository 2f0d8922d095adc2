//! One HAProxy traffic log line (`option tcplog` or `option httplog`) into a [`LogRecord`].
//!
//! The field order is HAProxy's documented default for each format:
//!
//! ```text
//! tcplog:  CLIENT_IP:PORT [ACCEPT_DATE] FRONTEND[~] BACKEND/SERVER Tw/Tc/Tt BYTES_READ TERM
//!          ACTCONN/FECONN/BECONN/SRVCONN/RETRIES SRV_QUEUE/BACKEND_QUEUE
//! httplog: CLIENT_IP:PORT [REQUEST_DATE] FRONTEND[~] BACKEND/SERVER TR/Tw/Tc/Tr/Ta STATUS BYTES_READ
//!          REQ_COOKIE RES_COOKIE TERM ACTCONN/.../RETRIES SRV_QUEUE/BACKEND_QUEUE
//!          [{REQ_HEADERS}] [{RES_HEADERS}] "REQUEST LINE"
//! ```
//!
//! The two are told apart by the number of timers (three or five). A `+` in front of a timer or
//! the byte count (`option logasap`) is accepted, and `-1` (a step that never happened) is `None`.
//! The record borrows from the line: parsing allocates nothing unless the line is bad. Custom
//! `log-format` strings are not supported.

mod date;
mod syslog;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use date::{LogDate, SyslogTime};
pub use syslog::SyslogHeader;

/// One traffic line, borrowed from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// The syslog prefix, when the line has one.
    pub syslog: Option<SyslogHeader<'a>>,
    /// The client that connected to HAProxy.
    pub client: SocketAddr,
    /// When HAProxy accepted the connection (httplog: received the request), local time.
    pub accept_date: LogDate,
    /// The frontend (or listen section), without the `~` HAProxy appends for SSL.
    pub frontend: &'a str,
    /// The frontend name ended in `~`: the client spoke TLS to HAProxy.
    pub ssl: bool,
    /// The backend HAProxy chose; the frontend's own name when it chose none.
    pub backend: &'a str,
    /// The server; `<NOSRV>` when none was reached.
    pub server: &'a str,
    pub timers: Timers,
    /// Bytes sent back to the client (HAProxy's `bytes_read`: read from the server).
    pub bytes_read: u64,
    /// `option logasap`: logged at connect, so the total time and bytes are partial.
    pub logasap: bool,
    /// Termination state: two characters (tcplog) or four (httplog), e.g. `--` or `SD--`.
    pub termination: &'a str,
    /// httplog only.
    pub http: Option<HttpFields<'a>>,
}

/// The fields only httplog has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpFields<'a> {
    /// `None` when HAProxy logged `-1` (no response).
    pub status: Option<u16>,
    /// The request line without its quotes, e.g. `GET /index.html HTTP/1.1`, or `<BADREQ>`.
    pub request: &'a str,
    /// The line ended inside the request line (a syslog length limit cut it).
    pub request_truncated: bool,
}

/// HAProxy's timers in milliseconds; `None` for `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timers {
    /// tcplog: waiting in queues, connecting to the server, the whole session.
    Tcp { tw: Option<u64>, tc: Option<u64>, tt: Option<u64> },
    /// httplog: receiving the request, queues, connect, the server's response, the whole request.
    Http { tr: Option<u64>, tw: Option<u64>, tc: Option<u64>, tr_server: Option<u64>, ta: Option<u64> },
}

impl Timers {
    /// How long the connection (tcplog) or request (httplog) lasted.
    pub fn total_ms(&self) -> Option<u64> {
        match *self {
            Timers::Tcp { tt, .. } => tt,
            Timers::Http { ta, .. } => ta,
        }
    }
}

/// A field of a log line, to say which one was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// `<pri>`, timestamp, host name and `tag[pid]:` in front of the message.
    SyslogHeader,
    /// `client_ip:client_port`.
    ClientAddress,
    /// `[accept_date]` (httplog: the request date).
    AcceptDate,
    /// The frontend name, `~` appended for SSL.
    Frontend,
    /// `backend_name/server_name`.
    BackendServer,
    /// `Tw/Tc/Tt` or `TR/Tw/Tc/Tr/Ta`.
    Timers,
    /// The HTTP status code (httplog).
    StatusCode,
    /// The bytes sent to the client.
    BytesRead,
    /// The captured request and response cookies (httplog).
    Cookies,
    /// The termination state flags.
    TerminationState,
    /// `actconn/feconn/beconn/srv_conn/retries`.
    Connections,
    /// `srv_queue/backend_queue`.
    Queues,
    /// `{captured request headers} {captured response headers}` (httplog, when configured).
    CapturedHeaders,
    /// The quoted HTTP request line (httplog).
    RequestLine,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::SyslogHeader => "syslog header",
            Field::ClientAddress => "client address",
            Field::AcceptDate => "accept date",
            Field::Frontend => "frontend",
            Field::BackendServer => "backend/server",
            Field::Timers => "timers",
            Field::StatusCode => "status code",
            Field::BytesRead => "bytes read",
            Field::Cookies => "captured cookies",
            Field::TerminationState => "termination state",
            Field::Connections => "connection counts",
            Field::Queues => "queue counts",
            Field::CapturedHeaders => "captured headers",
            Field::RequestLine => "request line",
        })
    }
}

/// Why a line is not an HAProxy traffic line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The line ended before this field (a truncated line).
    #[error("line ends before the {0}")]
    Missing(Field),
    /// The field is there but not in HAProxy's format; `value` is its first 60 characters.
    #[error("bad {field}: {value:?}")]
    Bad { field: Field, value: String },
}

impl LogError {
    /// The field that failed.
    pub fn field(&self) -> Field {
        match self {
            LogError::Missing(f) | LogError::Bad { field: f, .. } => *f,
        }
    }
}

/// Parses one line (a trailing newline is fine); see the module doc for the formats.
pub fn parse_log_line(line: &str) -> Result<LogRecord<'_>, LogError> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (syslog, mut rest) = syslog::split(line)?;
    let rest = &mut rest;

    let client = field(rest, Field::ClientAddress, client_addr)?;
    let accept_date =
        field(rest, Field::AcceptDate, |w| LogDate::parse(w.strip_prefix('[')?.strip_suffix(']')?))?;
    let (frontend, ssl) = field(rest, Field::Frontend, |w| {
        let (name, ssl) = w.strip_suffix('~').map_or((w, false), |n| (n, true));
        (!name.is_empty()).then_some((name, ssl))
    })?;
    let (backend, server) = field(rest, Field::BackendServer, |w| {
        w.split_once('/').filter(|(b, s)| !b.is_empty() && !s.is_empty())
    })?;
    let (timers, mut logasap) = field(rest, Field::Timers, timers)?;
    let http = matches!(timers, Timers::Http { .. });
    let status = if http { Some(field(rest, Field::StatusCode, status)?) } else { None };
    let (bytes_read, bytes_plus) = field(rest, Field::BytesRead, |w| {
        let (n, plus) = w.strip_prefix('+').map_or((w, false), |n| (n, true));
        Some((digits(n)?, plus))
    })?;
    logasap |= bytes_plus;
    if http {
        field(rest, Field::Cookies, Some)?;
        field(rest, Field::Cookies, Some)?;
    }
    let term_len = if http { 4 } else { 2 };
    let termination = field(rest, Field::TerminationState, |w| {
        (w.len() == term_len && w.bytes().all(|c| c.is_ascii_graphic())).then_some(w)
    })?;
    field(rest, Field::Connections, |w| counts(w, 5))?;
    field(rest, Field::Queues, |w| counts(w, 2))?;

    let http = match status {
        None => None,
        Some(status) => {
            let (request, request_truncated) = request_line(rest)?;
            Some(HttpFields { status, request, request_truncated })
        }
    };
    Ok(LogRecord {
        syslog,
        client,
        accept_date,
        frontend,
        ssl,
        backend,
        server,
        timers,
        bytes_read,
        logasap,
        termination,
        http,
    })
}

/// The next space-separated word, skipping leading spaces.
pub(crate) fn next_word<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start_matches(' ');
    if s.is_empty() {
        *rest = s;
        return None;
    }
    let end = s.find(' ').unwrap_or(s.len());
    *rest = &s[end..];
    Some(&s[..end])
}

fn field<'a, T>(
    rest: &mut &'a str,
    f: Field,
    parse: impl FnOnce(&'a str) -> Option<T>,
) -> Result<T, LogError> {
    let word = next_word(rest).ok_or(LogError::Missing(f))?;
    parse(word).ok_or_else(|| LogError::bad(f, word))
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `10.0.1.2:33313`, `::1:33313` (HAProxy writes IPv6 clients without brackets) or `[::1]:33313`.
fn client_addr(w: &str) -> Option<SocketAddr> {
    let (ip, port) = w.rsplit_once(':')?;
    let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
    Some(SocketAddr::new(ip.parse::<IpAddr>().ok()?, port.parse().ok()?))
}

/// `-1`, `123` or `+123` (logasap); returns the value and whether it had the `+`.
fn timer(w: &str) -> Option<(Option<u64>, bool)> {
    match w {
        "-1" => Some((None, false)),
        _ => match w.strip_prefix('+') {
            Some(n) => Some((Some(digits(n)?), true)),
            None => Some((Some(digits(w)?), false)),
        },
    }
}

fn timers(w: &str) -> Option<(Timers, bool)> {
    let mut parts = [(None, false); 5];
    let mut n = 0;
    for part in w.split('/') {
        *parts.get_mut(n)? = timer(part)?;
        n += 1;
    }
    let plus = parts.iter().any(|(_, p)| *p);
    let v = |i: usize| parts[i].0;
    match n {
        3 => Some((Timers::Tcp { tw: v(0), tc: v(1), tt: v(2) }, plus)),
        5 => Some((Timers::Http { tr: v(0), tw: v(1), tc: v(2), tr_server: v(3), ta: v(4) }, plus)),
        _ => None,
    }
}

fn status(w: &str) -> Option<Option<u16>> {
    match w {
        "-1" => Some(None),
        _ => Some(Some(digits(w).filter(|s| (100..1000).contains(s))? as u16)),
    }
}

/// `a/b/c/d/e` with `n` numeric parts (retries may carry a `+` for a redispatch).
fn counts(w: &str, n: usize) -> Option<()> {
    let mut found = 0;
    for part in w.split('/') {
        digits(part.strip_prefix('+').unwrap_or(part))?;
        found += 1;
    }
    (found == n).then_some(())
}

/// Optional `{...}` header captures, then the quoted request line.
fn request_line<'a>(rest: &mut &'a str) -> Result<(&'a str, bool), LogError> {
    let mut s = rest.trim_start_matches(' ');
    while s.starts_with('{') {
        let end = s.find('}').ok_or(LogError::Missing(Field::CapturedHeaders))?;
        s = s[end + 1..].trim_start_matches(' ');
    }
    if s.is_empty() {
        return Err(LogError::Missing(Field::RequestLine));
    }
    let quoted = s.strip_prefix('"').ok_or_else(|| LogError::bad(Field::RequestLine, s))?;
    *rest = "";
    Ok(match quoted.find('"') {
        Some(end) => (&quoted[..end], false),
        None => (quoted, true),
    })
}

#[cfg(test)]
mod tests;
