//! HAProxy log lines (tcplog, httplog, with and without syslog prefixes), one per input line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        match cordon_haproxy::parse_log_line(line) {
            Ok(record) => {
                let _ = format!("{record:?}");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
