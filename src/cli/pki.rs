//! `cordon ca ...` and `cordon cert issue`: the built-in CA and its signing service.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::Outcome;
use crate::pki::{Ca, DEFAULT_LEAF_DAYS, HostName, ServiceName, TrustDomain};

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a CA (ECDSA P-256) for a trust domain. Refuses to overwrite an existing one.
    Init {
        /// Where the CA lives: ca.pem, ca-key.pem (0600) and trust-domain.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The SPIFFE trust domain, e.g. example.internal.
        #[arg(long, value_name = "TD")]
        trust_domain: String,
    },
    /// Run the signing service: hosts enrol with a join token and renew over mTLS.
    Serve {
        /// The CA directory; its key never leaves this machine.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where to listen, e.g. 0.0.0.0:8443 (port 0: any; the address is printed).
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// The issuance log, one JSON line per leaf signed or request refused [default: DIR/issuance.jsonl].
        #[arg(id = "issuance_log", long = "log", value_name = "FILE")]
        log: Option<PathBuf>,
        #[command(flatten)]
        log_filter: LogFilter,
        /// Lifetime of the leaves it signs (24h, 90m, 30s).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::pki::issuer::parse_ttl)]
        leaf_ttl: std::time::Duration,
        /// Refused enrolments are audited.
        #[command(flatten)]
        audit: super::audit::AuditArgs,
        /// Open connections one source address may hold (hosts behind one NAT share it).
        #[arg(long, value_name = "N", default_value_t = crate::pki::issuer::server::DEFAULT_LIMITS.per_source_connections)]
        per_source_connections: usize,
        /// New connections a second one source address may open (0: no limit).
        #[arg(long, value_name = "N", default_value_t = crate::pki::issuer::server::DEFAULT_LIMITS.per_source_rate)]
        per_source_rate: u32,
    },
    /// Mint a one-time join token for a host and its identities (the last line of stdout).
    Token {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The host that will use it (the agent's `host`).
        #[arg(long, value_name = "HOST")]
        host: String,
        /// An identity the host may hold; repeat for several.
        #[arg(long = "service", value_name = "NAME", required = true, num_args = 1..)]
        services: Vec<String>,
        /// How long the token stays usable (24h, 30m).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::pki::issuer::parse_ttl)]
        ttl: std::time::Duration,
        #[command(flatten)]
        audit: super::audit::AuditArgs,
    },
    /// Move a CA rotation one step: prepare a new CA, activate it, retire the old one.
    Rotate {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The signing service's issuance log [default: DIR/issuance.jsonl].
        #[arg(id = "issuance_log", long = "log", value_name = "FILE")]
        log: Option<PathBuf>,
        #[command(flatten)]
        log_filter: LogFilter,
        /// Step on even though hosts have not caught up with the previous step.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        audit: super::audit::AuditArgs,
    },
    /// Revoke a host (every leaf naming it) or one serial: refused at renewal and enrolment, and
    /// by every host once the list reaches it (DIR/revoked.json).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["host", "serial"])))]
    Revoke {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A host: its leaves so far are refused; a join token minted later enrols it again.
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// One leaf's serial (hex, as the issuance log shows it).
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
        /// Why, kept in the list (at most 200 bytes).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        audit: super::audit::AuditArgs,
    },
}

/// The log filter of a command whose own `--log` names its issuance log.
///
/// Everywhere else the filter is the global `--log`; here that flag is taken, so the filter is
/// `--log-filter`, `CORDON_LOG`, or `--log` given before the subcommand (`cordon --log debug ca
/// serve ...`). The field keeps the global option's clap id, `log`: clap then does not copy the
/// global option into this command (two `--log` flags), and the filter given here still reaches
/// the logging set up in `cli::main`.
#[derive(Debug, clap::Args)]
pub struct LogFilter {
    /// Log filter (tracing's env-filter syntax), as the global `--log` elsewhere.
    #[arg(id = "log", long = "log-filter", value_name = "FILTER", env = "CORDON_LOG")]
    pub filter: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a certificate for a service: DIR/cert.pem, key.pem (0600) and ca.pem.
    Issue {
        /// The CA directory (`cordon ca init`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The service name: the certificate's identity is spiffe://TD/service/NAME.
        #[arg(long, value_name = "NAME")]
        service: String,
        /// Where to write the files (created if missing; existing files are replaced atomically).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The host that will hold it, named in the leaf (so it can be revoked with the host).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Lifetime in days. Short-lived leaves limit what a stolen key is worth.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
    },
}

pub fn ca(cmd: CaCommand) -> anyhow::Result<Outcome> {
    match cmd {
        CaCommand::Init { dir, trust_domain } => {
            let td = TrustDomain::new(&trust_domain).context("--trust-domain")?;
            Ca::init(&dir, &td)?;
            writeln!(
                std::io::stdout().lock(),
                "created a CA for spiffe://{td} in {}\n  ca.pem      distribute to every host (tls.ca)\n  ca-key.pem  keep it secret: it issues every identity",
                dir.display()
            )?;
            Ok(Outcome::Success)
        }
        CaCommand::Serve {
            dir,
            listen,
            log,
            leaf_ttl,
            audit,
            per_source_connections,
            per_source_rate,
            ..
        } => {
            anyhow::ensure!(per_source_connections >= 1, "--per-source-connections must be at least 1");
            let limits = crate::proxy::http_server::HttpLimits {
                per_source_connections,
                per_source_rate,
                ..crate::pki::issuer::server::DEFAULT_LIMITS
            };
            let audit = audit.open(dir.join(crate::audit::DEFAULT_FILE))?;
            super::issuer::serve(dir, listen, log, leaf_ttl, audit, limits)
        }
        CaCommand::Token { dir, host, services, ttl, audit } => {
            let audit = audit.open(dir.join(crate::audit::DEFAULT_FILE))?;
            super::issuer::token(dir, host, services, ttl, &audit)
        }
        CaCommand::Rotate { dir, log, force, audit, .. } => {
            let audit = audit.open(dir.join(crate::audit::DEFAULT_FILE))?;
            super::issuer::rotate(dir, log, force, &audit)
        }
        CaCommand::Revoke { dir, host, serial, reason, audit } => {
            let audit = audit.open(dir.join(crate::audit::DEFAULT_FILE))?;
            super::issuer::revoke(dir, host, serial, reason, &audit)
        }
    }
}

pub fn cert(cmd: CertCommand) -> anyhow::Result<Outcome> {
    match cmd {
        CertCommand::Issue { ca, service, host, out, days } => {
            anyhow::ensure!(days >= 1, "--days must be at least 1");
            let name = ServiceName::new(&service).context("--service")?;
            let host = host.map(|h| HostName::new(&h)).transpose().context("--host")?;
            let ca = Ca::load(&ca)?;
            let leaf = ca.issue_for(&name, host.as_ref(), days)?;
            ca.write_leaf(&leaf, &out)?;
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "issued spiffe://{}/service/{name}, valid {days} days, into {}",
                ca.trust_domain(),
                out.display()
            )?;
            match host {
                Some(h) => writeln!(stdout, "  the leaf names host {h}")?,
                None => writeln!(
                    stdout,
                    "  the leaf names no host (--host HOST): the ingest service refuses it and `ca revoke --host` cannot reach it"
                )?,
            }
            Ok(Outcome::Success)
        }
    }
}
