use super::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/../fixtures/haproxy/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(!text.trim().is_empty(), "{path} is empty");
    text
}

/// (line number, result) for every non-blank line of a fixture.
fn parse_all(text: &str) -> Vec<(usize, Result<LogRecord<'_>, LogError>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, parse_log_line(l)))
        .collect()
}

#[test]
fn a_tcplog_line_with_every_field() {
    let line = "<134>Nov 22 14:05:01 web-1 haproxy[1234]: 127.0.0.1:51234 [22/Nov/2026:14:05:01.123] db \
                db/10.0.2.21:5432_db-1 0/1/5007 2120 -- 3/1/1/1/0 0/0\n";
    let r = parse_log_line(line).unwrap();
    let h = r.syslog.unwrap();
    assert_eq!(
        (h.priority, h.hostname, h.tag, h.pid),
        (Some(134), Some("web-1"), Some("haproxy"), Some(1234))
    );
    assert_eq!(r.client, "127.0.0.1:51234".parse().unwrap());
    assert_eq!(r.accept_date.unix_ms(0), 1_795_356_301_123);
    assert_eq!((r.frontend, r.ssl, r.backend, r.server), ("db", false, "db", "10.0.2.21:5432_db-1"));
    assert_eq!(r.timers, Timers::Tcp { tw: Some(0), tc: Some(1), tt: Some(5007) });
    assert_eq!((r.bytes_read, r.logasap, r.termination, r.http), (2120, false, "--", None));
}

#[test]
fn an_httplog_line_with_ssl_and_captured_headers() {
    let line = "127.0.0.1:52002 [22/Nov/2026:14:06:02.200] auth~ auth/a 2/0/3/25/30 401 312 - - ---- \
                3/1/1/1/0 0/0 {web.example|curl/8.5.0 (x86_64)} {} \"POST /login HTTP/1.1\"";
    let r = parse_log_line(line).unwrap();
    assert_eq!(r.syslog, None);
    assert_eq!((r.frontend, r.ssl), ("auth", true));
    assert_eq!(
        r.timers,
        Timers::Http { tr: Some(2), tw: Some(0), tc: Some(3), tr_server: Some(25), ta: Some(30) }
    );
    assert_eq!(r.timers.total_ms(), Some(30));
    let http = r.http.unwrap();
    assert_eq!(
        (http.status, http.request, http.request_truncated),
        (Some(401), "POST /login HTTP/1.1", false)
    );
    assert_eq!((r.bytes_read, r.termination), (312, "----"));
}

#[test]
fn syslog_prefixes_of_every_kind() {
    let msg = "10.0.0.7:1 [22/Nov/2026:14:05:01.000] db db/s 0/0/1 2 -- 1/1/1/1/0 0/0";
    let cases: [(&str, Option<&str>, Option<&str>); 6] = [
        ("<134>Nov 22 14:05:01 web-1 haproxy[1]: ", Some("web-1"), Some("haproxy")),
        ("Nov  2 14:05:01 web-1 haproxy[1]: ", Some("web-1"), Some("haproxy")),
        ("<134>Nov 22 14:05:01 haproxy[1]: ", None, Some("haproxy")),
        ("2026-11-22T14:05:01.000001+00:00 10.0.1.11 haproxy: ", Some("10.0.1.11"), Some("haproxy")),
        ("<134>1 2026-11-22T14:05:01Z web-1 haproxy 1 - [meta x=\"a\\]b\"] ", Some("web-1"), Some("haproxy")),
        ("haproxy[1]: ", None, Some("haproxy")),
    ];
    for (prefix, host, tag) in cases {
        let line = format!("{prefix}{msg}");
        let r = parse_log_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let h = r.syslog.unwrap();
        assert_eq!((h.hostname, h.tag), (host, tag), "{line}");
        assert!(h.time.is_some() || prefix.starts_with("haproxy"), "{line}");
        assert_eq!(r.client, "10.0.0.7:1".parse().unwrap());
    }
}

#[test]
fn logasap_no_server_and_ipv6_clients() {
    let r = parse_log_line(
        "::1:51270 [22/Nov/2026:14:05:06.000] search search/<NOSRV> 0/-1/+3000 +0 sC 1/1/0/0/+3 0/0",
    )
    .unwrap();
    assert_eq!(r.client, "[::1]:51270".parse().unwrap());
    assert_eq!(r.timers, Timers::Tcp { tw: Some(0), tc: None, tt: Some(3000) });
    assert!(r.logasap);
    assert_eq!(r.server, "<NOSRV>");
}

#[test]
fn each_bad_field_is_named() {
    let good = "10.0.0.7:1 [22/Nov/2026:14:05:01.000] api api/s 0/0/1/2/3 200 9 - - ---- 1/1/1/1/0 0/0 \"GET / HTTP/1.1\"";
    parse_log_line(good).unwrap();
    let cases: [(&str, &str, Field); 12] = [
        ("10.0.0.7:1 ", "10.0.0.7 ", Field::ClientAddress),
        ("10.0.0.7:1 ", "Proxy ", Field::ClientAddress),
        ("[22/Nov/2026:14:05:01.000]", "[22/Nov/2026:14:05:01]", Field::AcceptDate),
        ("api/s", "api", Field::BackendServer),
        ("0/0/1/2/3", "0/0/1/2", Field::Timers),
        ("0/0/1/2/3", "0/x/1/2/3", Field::Timers),
        (" 200 ", " 2xx ", Field::StatusCode),
        (" 9 ", " -9 ", Field::BytesRead),
        ("----", "--", Field::TerminationState),
        ("1/1/1/1/0", "1/1/1", Field::Connections),
        (" 0/0 ", " 0/a ", Field::Queues),
        ("\"GET", "GET", Field::RequestLine),
    ];
    for (from, to, field) in cases {
        assert!(good.contains(from), "{from}");
        let line = good.replacen(from, to, 1);
        let err = parse_log_line(&line).unwrap_err();
        assert_eq!(err.field(), field, "{line}: {err}");
    }
    assert_eq!(parse_log_line("<999>Nov 22 14:05:01 x").unwrap_err().field(), Field::SyslogHeader);
    assert_eq!(parse_log_line("").unwrap_err(), LogError::Missing(Field::ClientAddress));
}

#[test]
fn truncated_lines_say_where_they_end() {
    let full = "10.0.0.7:1 [22/Nov/2026:14:05:01.000] api api/s 0/0/1/2/3 200 9 - - ---- 1/1/1/1/0 0/0 {h} \"GET / HTTP/1.1\"";
    // Cut anywhere before the request line: an error naming a field, never a panic.
    for cut in 0..full.find(" {h}").unwrap() {
        let part = &full[..cut];
        assert!(parse_log_line(part).is_err(), "{part:?} parsed");
    }
    assert_eq!(parse_log_line(&full[..full.len() - 20]).unwrap_err(), LogError::Missing(Field::RequestLine));
    assert_eq!(
        parse_log_line(&full[..full.len() - 18]).unwrap_err(),
        LogError::Missing(Field::CapturedHeaders)
    );
    let cut_request = parse_log_line(&full[..full.len() - 5]).unwrap();
    let http = cut_request.http.unwrap();
    assert_eq!((http.request, http.request_truncated), ("GET / HTTP", true));
}

#[test]
fn the_tcplog_fixture() {
    let text = fixture("tcplog.log");
    let all = parse_all(&text);
    let bad: Vec<usize> = all.iter().filter(|(_, r)| r.is_err()).map(|(n, _)| *n).collect();
    assert_eq!(bad, [5, 7, 11, 13], "malformed, admin and garbage lines");
    let good: Vec<(&str, &str, String)> = all
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|r| (r.frontend, r.backend, r.client.ip().to_string()))
        .collect();
    assert_eq!(good.len(), 8);
    assert_eq!(good[2], ("db", "db", "10.0.9.5".to_string()));
    assert!(all.iter().filter_map(|(_, r)| r.as_ref().ok()).all(|r| r.http.is_none()));
}

#[test]
fn the_httplog_fixture() {
    let text = fixture("httplog.log");
    let all = parse_all(&text);
    let bad: Vec<usize> = all.iter().filter(|(_, r)| r.is_err()).map(|(n, _)| *n).collect();
    assert_eq!(bad, [4, 7], "a bad status and a line cut before its queues");
    let good: Vec<&LogRecord> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    assert_eq!(good.len(), 7);
    assert!(good.iter().all(|r| r.http.is_some()));
    assert!(good[1].ssl);
    assert_eq!((good[3].frontend, good[3].backend), ("gateway", "api-v2"));
    assert_eq!(good[4].http.unwrap().request, "<BADREQ>");
    assert!(good[5].http.unwrap().request_truncated);
    assert_eq!(good[6].syslog.unwrap().hostname, Some("10.0.1.11"));
}

/// `haproxy-2.6-stdout.log` was captured from HAProxy 2.6.12 on loopback, logging every connection
/// three times (`log stdout format raw`, `rfc3164` and `rfc5424`): tcplog, httplog with a captured
/// header, a server that refused the connection (`SC`) and a bad request (`<BADREQ>`).
#[test]
fn lines_from_a_real_haproxy_in_every_syslog_format() {
    let text = fixture("haproxy-2.6-stdout.log");
    let all = parse_all(&text);
    assert_eq!(all.len(), 15);
    let records: Vec<LogRecord> =
        all.into_iter().map(|(n, r)| r.unwrap_or_else(|e| panic!("line {n}: {e}"))).collect();
    for triple in records.chunks(3) {
        let [raw, bsd, ietf] = triple else { panic!("lines come in threes") };
        assert_eq!(raw.syslog, None);
        assert_eq!(bsd.syslog.unwrap().hostname, Some("localhost"));
        assert_eq!(ietf.syslog.unwrap().hostname, None, "RFC 5424 nil host name");
        for r in [bsd, ietf] {
            assert_eq!(LogRecord { syslog: None, ..r.clone() }, *raw, "same connection, same record");
        }
    }
    let kinds: Vec<(&str, &str)> = records.iter().step_by(3).map(|r| (r.frontend, r.termination)).collect();
    assert_eq!(kinds, [("db", "--"), ("api", "----"), ("api", "----"), ("gone", "SC"), ("api", "PR--")]);
    assert_eq!(records[12].http.unwrap().request, "<BADREQ>");
    assert_eq!(records[9].timers, Timers::Tcp { tw: Some(1), tc: None, tt: Some(3004) });
}
