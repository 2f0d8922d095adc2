//! What a security team runs, for tests of the decision records: Debian's rsyslog started in a
//! temporary directory with its own config (a socket of its own, records into a file), and the
//! OCSF checker (scripts/ocsf_check.py, on ocsf-emitter from PyPI).
//!
//! Where rsyslog, python3 or ocsf-emitter is missing, the helpers return `None` after saying so
//! loudly on stderr, unless `CORDON_REQUIRE_OCSF=1` (CI), where they panic.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var("CORDON_REQUIRE_OCSF").as_deref() == Ok("1")
}

fn skip(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why}, and CORDON_REQUIRE_OCSF=1 requires it");
    }
    eprintln!("\n!!! SKIPPING {test}: {why} (CI sets CORDON_REQUIRE_OCSF=1 and installs it) !!!\n");
}

/// An rsyslogd of the test's own, in the foreground, without privilege drop: it reads
/// [`Rsyslog::socket`] and writes each message's MSG part to [`Rsyslog::records`] and the whole
/// message (RFC 5424, as received) to [`Rsyslog::full`].
pub struct Rsyslog {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Rsyslog {
    pub fn start(test: &str) -> Option<Rsyslog> {
        let bin =
            ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"].into_iter().map(PathBuf::from).find(|p| p.exists());
        let Some(bin) = bin else {
            skip(test, "rsyslogd is not installed (Debian package rsyslog)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("work")).unwrap();
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" UseSpecialParser="off" ParseHostname="on" RateLimit.Interval="0")
template(name="msgonly" type="string" string="%msg%\n")
*.* action(type="omfile" file="{records}" template="msgonly")
*.* action(type="omfile" file="{full}" template="RSYSLOG_SyslogProtocol23Format")
"#,
            work = d.join("work").display(),
            sock = d.join("log.sock").display(),
            records = d.join("records.log").display(),
            full = d.join("full.log").display(),
        );
        std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
        let child = Command::new(bin)
            .args(["-n", "-f"])
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let r = Rsyslog { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !r.socket().exists() {
            assert!(Instant::now() < deadline, "rsyslogd never created {}", r.socket().display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }

    /// The socket rsyslog reads (what `decision_log = "syslog:PATH"` names).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    /// Each message's MSG part, one per line.
    pub fn records(&self) -> PathBuf {
        self.dir.path().join("records.log")
    }

    /// Each message as rsyslog received it (RFC 5424).
    pub fn full(&self) -> PathBuf {
        self.dir.path().join("full.log")
    }

    /// The MSG parts written so far, each parsed as JSON.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.records())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits until `n` records have arrived (or panics after `deadline`, naming how many did).
    pub fn wait_for(&self, n: usize, deadline: Duration) -> Vec<serde_json::Value> {
        let until = Instant::now() + deadline;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < until,
                "{} of {n} records reached rsyslog within {deadline:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs scripts/ocsf_check.py on `file`: `Some(report)` when every record is valid, a panic
/// with the checker's findings when one is not, `None` (after a loud skip) when the checker
/// cannot run here.
pub fn ocsf_check(test: &str, file: &Path) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ocsf_check.py");
    let out = match Command::new("python3").arg(&script).arg(file).output() {
        Ok(out) => out,
        Err(e) => {
            skip(test, &format!("python3 cannot run ({e})"));
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => Some(stdout),
        Some(3) => {
            skip(test, "the OCSF validator ocsf-emitter is not installed (pip install ocsf-emitter)");
            None
        }
        _ => panic!(
            "{test}: the OCSF validator refused {}:\n{stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
