//! A real PostgreSQL for tests: Debian's binaries, `initdb` in a temporary directory, listening
//! on 127.0.0.1 and a free port, run as an unprivileged user (`nobody` when the tests run as
//! root, as CI does). Where PostgreSQL is not installed, [`Postgres::start`] returns `None` after
//! printing why, unless `CORDON_REQUIRE_POSTGRES=1` (CI), where it panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The password of the test superuser `cordon`.
pub const PASSWORD: &str = "pg-test-secret";

pub struct Postgres {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Run the server as this user (root cannot run postgres).
    as_user: Option<&'static str>,
    /// Extra `-c` settings (TLS).
    settings: Vec<String>,
}

fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CORDON_PG_BIN") {
        return Some(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Postgres {
    /// Initialises and starts a server; `None` (with a message) where PostgreSQL is absent.
    pub fn start(test: &str) -> Option<Postgres> {
        Self::start_with(test, |_| Vec::new())
    }

    /// Like [`Postgres::start`]; `settings` gets the data directory and returns extra `-c`
    /// settings (and may write files there first).
    pub fn start_with(test: &str, settings: impl FnOnce(&Path) -> Vec<String>) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if std::env::var("CORDON_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "{test}: PostgreSQL is required (CORDON_REQUIRE_POSTGRES=1) but no /usr/lib/postgresql/*/bin/initdb"
                );
            }
            eprintln!("skipping {test}: PostgreSQL is not installed (Debian package postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_user = is_root().then_some("nobody");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        if as_user.is_some() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(65534), Some(65534)).unwrap();
        }
        let mut pg = Postgres { dir, bin, port: 0, as_user, settings: Vec::new() };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "cordon",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.settings = settings(&data);
        if as_user.is_some() {
            for entry in std::fs::read_dir(&data).unwrap() {
                let p = entry.unwrap().path();
                if p.extension().is_some_and(|e| e == "pem" || e == "key") {
                    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
                }
            }
        }
        pg.port = free_port();
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    /// Starts the server (again, after [`Postgres::kill`] or [`Postgres::stop`]) on the same port.
    /// `fsync=off` survives a killed server (the OS keeps the writes); `synchronous_commit` stays
    /// on, as in production, so a commit the client saw survives [`Postgres::kill`].
    pub fn start_server(&self) {
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        for s in &self.settings {
            opts += &format!(" -c {s}");
        }
        let log = self.dir.path().join("server.log");
        let out = self
            .command("pg_ctl")
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "start",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once, as a crash would (no checkpoint, clients cut off).
    pub fn kill(&self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-w", "-m", mode, "stop"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A file holding `password`, readable by the test only.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{password}\n")).unwrap();
        // A secret: readable by its owner only, or cordon refuses it.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        p
    }

    /// `postgres://cordon@127.0.0.1:PORT/DB?password_file=...` with the right password.
    pub fn url(&self, db: &str) -> String {
        let pw = self.password_file("client-password", PASSWORD);
        format!("postgres://cordon@127.0.0.1:{}/{db}?password_file={}", self.port, pw.display())
    }

    /// Runs SQL through psql as the superuser; returns its stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "cordon"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates a database.
    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
