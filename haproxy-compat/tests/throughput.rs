//! How fast log lines parse: `cargo test -p cordon-haproxy --release --test throughput -- --ignored
//! --nocapture`. Ignored by default; it prints a figure and asserts only that every line parsed.

use std::time::Instant;

use cordon_haproxy::parse_log_line;

const LINES: usize = 1_000_000;

/// A generated log of realistic lines: syslog-prefixed and bare, tcplog and httplog.
fn generated() -> Vec<String> {
    (0..LINES)
        .map(|i| {
            let (a, b, port) = (i % 250, (i / 250) % 250, 20_000 + i % 40_000);
            let (sec, ms) = ((i / 1000) % 60, i % 1000);
            match i % 4 {
                0 => format!(
                    "<134>Nov 22 14:05:{sec:02} web-{a} haproxy[1234]: 127.0.0.1:{port} \
                     [22/Nov/2026:14:05:{sec:02}.{ms:03}] db db/10.0.{b}.{a}:5432_db-{a} 0/1/{i} {i} -- 3/1/1/1/0 0/0"
                ),
                1 => format!(
                    "Nov 22 14:05:{sec:02} web-{a} haproxy[1234]: 10.1.{b}.{a}:{port} \
                     [22/Nov/2026:14:05:{sec:02}.{ms:03}] api~ api/10.0.4.{a}:8080_api-{a} 0/0/1/12/{ms} 200 {i} \
                     - - ---- 4/2/1/1/0 0/0 {{web.example|curl/8.5.0}} {{}} \"GET /v1/users/{i} HTTP/1.1\""
                ),
                2 => format!(
                    "127.0.0.1:{port} [22/Nov/2026:14:05:{sec:02}.{ms:03}] cache cache/<NOSRV> -1/-1/0 0 SC \
                     1/1/0/0/0 0/0"
                ),
                _ => format!(
                    "<134>1 2026-11-22T14:05:{sec:02}.{ms:03}Z web-{a} haproxy 1234 - - ::1:{port} \
                     [22/Nov/2026:14:05:{sec:02}.{ms:03}] search search/s{b} 0/0/{ms} {i} -- 1/1/1/1/0 0/0"
                ),
            }
        })
        .collect()
}

#[test]
#[ignore = "a throughput figure; run with --release --ignored --nocapture"]
fn log_parser_throughput() {
    let lines = generated();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let started = Instant::now();
    let mut parsed = 0usize;
    let mut bytes_read = 0u64;
    for line in &lines {
        match parse_log_line(line) {
            Ok(r) => {
                parsed += 1;
                bytes_read = bytes_read.wrapping_add(r.bytes_read);
            }
            Err(e) if parsed < 3 => eprintln!("{line}: {e}"),
            Err(_) => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(parsed, LINES, "every generated line parses");
    println!(
        "parsed {LINES} lines ({:.0} MiB) in {secs:.3} s: {:.0} lines/s, {:.0} MiB/s (checksum {bytes_read})",
        bytes as f64 / 1048576.0,
        LINES as f64 / secs,
        bytes as f64 / 1048576.0 / secs
    );
}
