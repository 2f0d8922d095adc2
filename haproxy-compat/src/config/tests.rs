use super::*;

fn fixture() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/haproxy/haproxy.cfg");
    let text = std::fs::read_to_string(path).expect("fixtures/haproxy/haproxy.cfg exists");
    assert!(!text.trim().is_empty(), "fixtures/haproxy/haproxy.cfg is empty");
    text
}

fn listeners(parse: &ConfigParse) -> Vec<(&str, String, usize)> {
    parse.services.iter().map(|l| (l.service.as_str(), l.bind.to_string(), l.line)).collect()
}

#[test]
fn the_synapse_fixture_maps_to_its_services() {
    let parse = parse_config(&fixture()).unwrap();
    assert_eq!(
        listeners(&parse),
        [
            ("db", "127.0.0.1:3219".to_string(), 33),
            ("cache", "0.0.0.0:3220".to_string(), 44),
            ("api", "127.0.0.1:3221".to_string(), 49),
            ("api", "[::1]:3221".to_string(), 50),
            ("search", "0.0.0.0:3222".to_string(), 64),
            ("payments", "127.0.0.1:3224".to_string(), 72),
            ("payments", "127.0.0.1:3225".to_string(), 72),
        ]
    );
    assert_eq!(parse.services[0].section, "frontend db");
    assert_eq!(parse.services[1].section, "listen cache");
    let skipped: Vec<(usize, &str)> = parse.skipped.iter().map(|s| (s.line, s.section.as_str())).collect();
    assert_eq!(
        skipped,
        [
            (26, "listen stats"),
            (73, "frontend payments"),
            (81, "frontend auth"),
            (91, "frontend gateway"),
            (108, "frontend reports")
        ]
    );
    assert!(parse.skipped[0].reason.contains("statistics"), "{:?}", parse.skipped[0]);
    assert!(parse.skipped[1].reason.contains("UNIX socket"), "{:?}", parse.skipped[1]);
    assert!(parse.skipped[2].reason.contains("takes TLS from the apps"), "{:?}", parse.skipped[2]);
    assert!(parse.skipped[3].reason.contains("api-v1, api-v2"), "{:?}", parse.skipped[3]);
    assert!(parse.skipped[4].reason.contains("no bind"), "{:?}", parse.skipped[4]);
}

#[test]
fn listen_with_the_address_on_its_header_and_unknown_keywords() {
    let text = "listen db 127.0.0.1:3219\n  frobnicate yes\n  server a 10.0.0.1:5432\n";
    let parse = parse_config(text).unwrap();
    assert_eq!(listeners(&parse), [("db", "127.0.0.1:3219".to_string(), 1)]);
}

#[test]
fn default_backend_from_a_defaults_section() {
    let text = "defaults\n default_backend db\nfrontend f\n bind :1\nbackend db\n";
    assert_eq!(listeners(&parse_config(text).unwrap()), [("db", "0.0.0.0:1".to_string(), 4)]);
    let named = "defaults base\n default_backend db\ndefaults\nfrontend f from base\n bind :1\nbackend db\n";
    assert_eq!(listeners(&parse_config(named).unwrap())[0].0, "db");
}

#[test]
fn use_backend_to_the_one_default_is_still_one_service() {
    let text =
        "frontend f\n bind :1\n use_backend db if { src 10.0.0.0/8 }\n default_backend db\nbackend db\n";
    assert_eq!(listeners(&parse_config(text).unwrap())[0].0, "db");
}

#[test]
fn frontends_cordon_cannot_map_are_skipped_with_their_line() {
    let cases = [
        ("frontend f\n bind :1\nbackend b\n", "no default_backend"),
        ("frontend f\n bind :1\n default_backend nowhere\n", "not defined"),
        ("frontend f\n bind :1\n use_backend %[req.hdr(host)]\n", "run time"),
        ("frontend f\n bind :1\n default_backend b\n stats enable\nbackend b\n", "statistics"),
        ("frontend f\n bind db.internal:1\n default_backend b\nbackend b\n", "names a host"),
        ("frontend f\n bind :8000-8010\n default_backend b\nbackend b\n", "port range"),
    ];
    for (text, reason) in cases {
        let parse = parse_config(text).unwrap();
        assert!(parse.services.is_empty(), "{text}");
        assert!(parse.skipped[0].reason.contains(reason), "{text}: {:?}", parse.skipped);
    }
}

#[test]
fn malformed_lines_are_errors_naming_every_line() {
    let text = "frontend\nfrontend f\n bind :99999\n bind 127.0.0.1\n default_backend b\n acl x \"open\nbind\nbackend b\n bind\n";
    let errors = parse_config(text).unwrap_err();
    let lines: Vec<usize> = errors.0.iter().map(ConfigError::line).collect();
    assert_eq!(lines, [1, 3, 4, 6, 7, 9], "{errors}");
    let msg = errors.to_string();
    assert!(msg.contains("line 3: bad bind address: :99999"), "{msg}");
    assert!(msg.contains("line 1: frontend needs a name"), "{msg}");
}

#[test]
fn an_empty_or_comment_only_file_has_nothing() {
    assert_eq!(parse_config("").unwrap(), ConfigParse::default());
    assert_eq!(parse_config("# nothing\n\n   \n").unwrap(), ConfigParse::default());
}
