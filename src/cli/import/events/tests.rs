use std::net::IpAddr;

use cordon_haproxy::parse_log_line;

use super::*;

fn discovery_at(ip: IpAddr) -> Option<String> {
    (ip.to_string() == "10.0.9.5").then(|| "batch".to_string())
}

fn discovery_host(host: &str) -> Vec<String> {
    match host {
        "web-1" => vec!["web".to_string()],
        "shared-1" => vec!["ops".to_string(), "web".to_string()],
        _ => Vec::new(),
    }
}

fn naming(source: Option<&ServiceName>) -> Naming<'_> {
    Naming { source, service_at: &discovery_at, services_of_host: &discovery_host }
}

const DB: &str = "127.0.0.1:51234 [22/Nov/2026:14:05:01.123] db db/s 0/1/5007 2120 -- 3/1/1/1/0 0/0";

fn src(prefix: &str, client: &str, source: Option<&ServiceName>) -> Result<String, Unmapped> {
    let line = format!("{prefix}{}", DB.replacen("127.0.0.1", client, 1));
    source_of(&line, source)
}

fn source_of(line: &str, given: Option<&ServiceName>) -> Result<String, Unmapped> {
    source(&parse_log_line(line).unwrap(), &naming(given)).map(|(name, _)| name)
}

fn identified(prefix: &str, client: &str, given: Option<&ServiceName>) -> Identified {
    let line = format!("{prefix}{}", DB.replacen("127.0.0.1", client, 1));
    source(&parse_log_line(&line).unwrap(), &naming(given)).unwrap().1
}

#[test]
fn evidence_from_an_address_is_plaintext_evidence() {
    let ops = ServiceName::new("ops").unwrap();
    // A remote client is named by its address, as a plaintext caller of the inbound proxy is: it
    // must never be proposed as an allow on that evidence alone.
    assert_eq!(identified("", "10.0.9.5", Some(&ops)), Identified::PlaintextIp);
    assert_eq!(identified("", "10.0.9.6", None), Identified::Unknown);
    // The caller on the host that wrote the log is the host's own service.
    assert_eq!(identified("", "127.0.0.1", Some(&ops)), Identified::HaproxyLog);
    assert_eq!(
        identified("<134>Nov 22 14:05:01 web-1 haproxy[1]: ", "127.0.0.1", None),
        Identified::HaproxyLog
    );
    assert_eq!(identified("Nov 22 14:05:01 10.0.1.11 haproxy[1]: ", "127.0.0.1", None), Identified::Unknown);
}

#[test]
fn loopback_callers_are_the_host_that_wrote_the_log() {
    let web = ServiceName::new("web").unwrap();
    let ops = ServiceName::new("ops").unwrap();
    let tagged = "<134>Nov 22 14:05:01 web-1 haproxy[1]: ";
    assert_eq!(src(tagged, "127.0.0.1", Some(&ops)), Ok("ops".into()), "--source wins");
    assert_eq!(src(tagged, "127.0.0.1", None), Ok("web".into()), "host name through discovery");
    assert_eq!(src("Nov 22 14:05:01 10.0.1.11 haproxy[1]: ", "127.0.0.1", None), Ok("ip:10.0.1.11".into()));
    assert_eq!(
        src("Nov 22 14:05:01 web-9 haproxy[1]: ", "127.0.0.1", None),
        Err(Unmapped::UnknownHost(Some("web-9".into())))
    );
    assert_eq!(
        src("Nov 22 14:05:01 shared-1 haproxy[1]: ", "127.0.0.1", None),
        Err(Unmapped::AmbiguousHost("shared-1".into(), vec!["ops".into(), "web".into()]))
    );
    assert_eq!(src("", "127.0.0.1", None), Err(Unmapped::UnknownHost(None)), "a bare line has no host");
    assert_eq!(src("", "127.0.0.1", Some(&web)), Ok("web".into()));
    let v6 = DB.replacen("127.0.0.1:51234", "::1:51234", 1);
    assert_eq!(source_of(&v6, Some(&web)), Ok("web".into()));
    let mapped = DB.replacen("127.0.0.1:51234", "::ffff:127.0.0.1:51234", 1);
    assert_eq!(source_of(&mapped, Some(&web)), Ok("web".into()));
}

#[test]
fn other_callers_are_named_through_discovery_or_by_address() {
    let ops = ServiceName::new("ops").unwrap();
    assert_eq!(src("", "10.0.9.5", Some(&ops)), Ok("batch".into()), "--source is only for loopback");
    assert_eq!(src("", "10.0.9.6", None), Ok("ip:10.0.9.6".into()));
}

#[test]
fn destination_is_the_frontend_as_synapse_names_it() {
    // Synapse's `backend_name`: the service is `payments`, its backend `payments_v2`.
    let line = "127.0.0.1:1 [22/Nov/2026:14:06:04.400] payments payments_v2/10.0.6.61:7000 0/1/5 10 -- 1/1/1/1/0 0/0";
    assert_eq!(destination(&parse_log_line(line).unwrap()).unwrap().as_str(), "payments");
    let odd = DB.replacen("db db/s", "we:ird db/s", 1);
    assert_eq!(destination(&parse_log_line(&odd).unwrap()), Err(Unmapped::BadDestination("we:ird".into())));
}

#[test]
fn a_connection_is_an_opened_and_a_closed_event_at_the_logged_time() {
    let record = parse_log_line(DB).unwrap();
    let db = ServiceName::new("db").unwrap();
    let [opened, closed] = events(&record, ("web".into(), Identified::HaproxyLog), &db, Verdict::Deny, 3600);
    let at = UNIX_EPOCH + Duration::from_millis(1_795_356_301_123 - 3_600_000);
    let edge = EdgeKey {
        source: "web".into(),
        destination: "db".into(),
        identified: Identified::HaproxyLog,
        mode: Mode::Learn,
        verdict: Verdict::Deny,
    };
    assert_eq!(opened, Event::Opened { edge: edge.clone(), at });
    assert_eq!(
        closed,
        Event::Closed {
            edge,
            at: at + Duration::from_millis(5007),
            bytes_to_destination: 0,
            bytes_to_source: 2120,
            duration: Duration::from_millis(5007),
        }
    );
}
