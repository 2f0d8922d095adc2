//! `cordon ca serve`, `cordon ca token` and `cordon ca rotate`: the signing service and its
//! operations. The logic lives in `pki::issuer`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::Outcome;
use crate::pki::issuer::{
    self, CaSet, Leases, RevocationList, Revoke, RotateStep, ServeOptions, Service, TokenStore,
};
use crate::pki::{Ca, HostName, ServiceName};

/// The issuance log: `--log`, else `<CA>/issuance.jsonl`.
fn log_path(dir: &Path, log: Option<PathBuf>) -> PathBuf {
    log.unwrap_or_else(|| dir.join("issuance.jsonl"))
}

pub fn serve(
    dir: PathBuf,
    listen: String,
    log: Option<PathBuf>,
    leaf_ttl: Duration,
    audit: crate::audit::AuditLog,
    limits: crate::proxy::http_server::HttpLimits,
) -> anyhow::Result<Outcome> {
    let options = ServeOptions {
        log: log_path(&dir, log),
        dir,
        leaf_ttl,
        audit: Some(std::sync::Arc::new(audit)),
        limits,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cordon-ca")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let service = Service::open(options.clone())
            .with_context(|| format!("loading the CA in {}", options.dir.display()))?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        // Before the address is announced: a script that stops the service as soon as it has
        // read the address gets a clean stop, not the default action of the signal.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(service.run(listener, stop.clone()));
        tracing::info!(listen = %addr, log = %options.log.display(), "signing service listening");
        // The address on stdout, for scripts that listen on port 0.
        writeln!(std::io::stdout().lock(), "listening on {addr}")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stop.cancel();
        let _ = run.await;
        tracing::info!("signing service stopped");
        Ok(Outcome::Success)
    })
}

pub fn token(
    dir: PathBuf,
    host: String,
    services: Vec<String>,
    ttl: Duration,
    audit: &crate::audit::AuditLog,
) -> anyhow::Result<Outcome> {
    HostName::new(&host).context("--host")?;
    anyhow::ensure!(!services.is_empty(), "at least one --service is needed");
    for s in &services {
        ServiceName::new(s).with_context(|| format!("--service {s}"))?;
    }
    Ca::load(&dir)?;
    let token = TokenStore::new(&dir).mint(&host, &services, ttl)?;
    let minted = crate::audit::Record::token_minted(&dir, &host, &services, SystemTime::now() + ttl);
    super::audit::record(audit, &minted)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "join token for host {host}, identities {}, single use, valid {}:",
        services.join(", "),
        humanize(ttl)
    )?;
    writeln!(out, "{token}")?;
    Ok(Outcome::Success)
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn rotate(
    dir: PathBuf,
    log: Option<PathBuf>,
    force: bool,
    audit: &crate::audit::AuditLog,
) -> anyhow::Result<Outcome> {
    let log = log_path(&dir, log);
    let (leases, _) = Leases::replay(&log)?;
    let now = SystemTime::now();
    let ready = |step: RotateStep, set: &CaSet| -> Result<(), String> {
        let why = match step {
            RotateStep::Activated => {
                let next = set.next.as_ref().map(|n| n.fingerprint.clone()).unwrap_or_default();
                let hosts = leases.hosts_without(&next, now);
                (!hosts.is_empty()).then(|| {
                    format!(
                        "{} host(s) have not received the new CA in their bundle yet (they get it at their next renewal): {}",
                        hosts.len(),
                        shorten(&hosts)
                    )
                })
            }
            RotateStep::Retired => {
                let out: Vec<String> = leases
                    .leaves_not_from(&set.current.fingerprint, now)
                    .into_iter()
                    .map(|(h, i)| format!("{h}/{i}"))
                    .collect();
                (!out.is_empty()).then(|| {
                    format!(
                        "{} leaf/leaves of the old CA are still out (renewed at their next renewal): {}",
                        out.len(),
                        shorten(&out)
                    )
                })
            }
            RotateStep::Prepared => None,
        };
        match why {
            Some(w) if !force => Err(w),
            _ => Ok(()),
        }
    };
    let mut out = std::io::stdout().lock();
    let result = issuer::rotate(&dir, ready)?;
    let stepped = result
        .as_ref()
        .map(|s| match s {
            RotateStep::Prepared => "prepared",
            RotateStep::Activated => "activated",
            RotateStep::Retired => "retired",
        })
        .map_err(String::as_str);
    super::audit::record(audit, &crate::audit::Record::rotation_step(&dir, stepped, force))?;
    match result {
        Ok(step) => {
            let text = match step {
                RotateStep::Prepared => {
                    "prepared a new CA (next/): bundles now carry both; the old CA still signs.\n  Every host receives the new bundle at its next renewal; run `cordon ca rotate` again then."
                }
                RotateStep::Activated => {
                    "activated the new CA: it signs every leaf from now on; the old one stays in the bundle (old-ca.pem).\n  Every leaf is re-issued from the new CA at its next renewal; run `cordon ca rotate` again then to retire the old one."
                }
                RotateStep::Retired => "retired the old CA: bundles carry the new CA only.",
            };
            writeln!(out, "{text}")?;
            Ok(Outcome::Success)
        }
        Err(why) => {
            writeln!(out, "not yet: {why}\n  (--force to go on anyway)")?;
            Ok(Outcome::No)
        }
    }
}

pub fn revoke(
    dir: PathBuf,
    host: Option<String>,
    serial: Option<String>,
    reason: Option<String>,
    audit: &crate::audit::AuditLog,
) -> anyhow::Result<Outcome> {
    let what = match (host, serial) {
        (Some(h), None) => Revoke::Host(HostName::new(&h).context("--host")?),
        (None, Some(s)) => Revoke::Serial(crate::pki::revoked::normal_serial(&s).with_context(|| {
            format!("--serial {s:?}: expected the serial in hex, not zero (at most 20 bytes)")
        })?),
        _ => anyhow::bail!("give either --host or --serial"),
    };
    Ca::load(&dir)?;
    let fresh = RevocationList::revoke(&dir, &what, reason.as_deref(), SystemTime::now())?;
    let (kind, name) = match &what {
        Revoke::Host(h) => ("host", h.to_string()),
        Revoke::Serial(s) => ("serial", s.clone()),
    };
    let (host, serial) = match &what {
        Revoke::Host(_) => (Some(name.as_str()), None),
        Revoke::Serial(_) => (None, Some(name.as_str())),
    };
    super::audit::record(audit, &crate::audit::Record::revocation(&dir, host, serial, reason.as_deref()))?;
    let mut out = std::io::stdout().lock();
    if fresh {
        writeln!(out, "revoked {kind} {name} in {}", dir.join(issuer::REVOKED_FILE).display())?;
    } else {
        writeln!(out, "{kind} {name} was already revoked; the list is updated")?;
    }
    writeln!(
        out,
        "  the signing service refuses it from now on; hosts refuse it once the list reaches them (at most 60 s)"
    )?;
    Ok(Outcome::Success)
}

fn shorten(items: &[String]) -> String {
    let mut s = items.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 10 {
        s += &format!(", ... ({} more)", items.len() - 10);
    }
    s
}
