//! `cordon ship` (one ledger file into the fleet store, directly or through the ingest service),
//! `cordon store init`, `cordon store serve` (the ingest service) and `cordon store prune`.
//!
//! Thin: parse arguments, call [`crate::store`], print what happened.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::Outcome;
use crate::store::{self, StoreUrl};

/// Ship one ledger file into the fleet store (idempotent: shipping it again changes nothing).
#[derive(Debug, Args)]
pub struct ShipArgs {
    /// The ledger file (a host's ledger.db, an import, or a merged ledger).
    #[arg(long)]
    pub db: PathBuf,
    /// The ingest service, https://HOST:PORT (as the host of --config: its leaves, its rows), or
    /// the store itself with operator credentials, postgres://USER@HOST:PORT/DB[?password_file=PATH&ca=PATH]
    /// (rows count as seen, stamped `operator`).
    #[arg(long, value_parser = TargetParser)]
    pub to: store::ShipTo,
    /// The agent config whose certificates speak for this host (with an https:// --to).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rows per batch (one statement on the server).
    #[arg(long, default_value_t = store::DEFAULT_BATCH_ROWS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_rows: u64,
}

/// Maintain the fleet store.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create or upgrade the schema, its value checks, today's partitions and the roles
    /// cordon_ingest, cordon_operator and cordon_reviewer (idempotent; run as the database owner).
    Init(InitArgs),
    /// The ingest service: agents ship through it over mTLS; it holds the only write credentials.
    Serve(ServeArgs),
    /// Drop the history older than a window (whole day partitions, then the rest of that day).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The store: postgres://USER@HOST:PORT/DB[?password_file=PATH&ca=PATH].
    #[arg(long, value_parser = UrlParser)]
    pub db: StoreUrl,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The store, as a member of cordon_ingest: postgres://USER@HOST:PORT/DB?password_file=PATH[&ca=PATH].
    #[arg(long, value_parser = UrlParser)]
    pub db: StoreUrl,
    /// Address to listen on (HOST:PORT; port 0 picks one, printed on stdout).
    #[arg(long)]
    pub listen: String,
    /// The CA bundle agents' leaves chain to (with --issuer, replaced by the signing service's bundle
    /// as it changes, as an agent's tls.ca is).
    #[arg(long)]
    pub ca: PathBuf,
    /// Directory holding cordon-store/cert.pem and cordon-store/key.pem (spiffe://TD/service/cordon-store),
    /// issued by hand, or enrolled here with --host, --issuer and --join-token-file.
    #[arg(long)]
    pub tls_dir: PathBuf,
    /// The host this service runs on, which its enrolled leaf names (with --issuer and --join-token-file).
    #[arg(long, requires_all = ["issuer", "join_token_file"], value_parser = host_name)]
    pub host: Option<String>,
    /// The signing service, https://HOST:PORT: enrol the leaf when --tls-dir has none valid, renew it
    /// when due (served without a restart), and poll the revocation list: requests from revoked hosts
    /// or leaves are refused. Without it, no list is polled: only a revoked.json put in --tls-dir by
    /// hand is in force, and none is by default.
    #[arg(long, requires_all = ["host", "join_token_file"], value_parser = issuer_url)]
    pub issuer: Option<String>,
    /// The join token for the first enrolment (cordon ca token --service cordon-store); must be 0600.
    #[arg(long, requires_all = ["host", "issuer"])]
    pub join_token_file: Option<PathBuf>,
    /// How often to poll the signing service's revocation list, in milliseconds [default: 30000].
    #[arg(long, requires = "issuer", value_parser = clap::value_parser!(u64).range(100..=30_000))]
    pub revocation_poll_ms: Option<u64>,
}

fn host_name(s: &str) -> Result<String, String> {
    crate::pki::HostName::new(s).map(|h| h.to_string()).map_err(|e| e.to_string())
}

fn issuer_url(s: &str) -> Result<String, String> {
    crate::pki::issuer::IssuerSettings::parse(s, None).map(|_| s.to_owned())
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The store: postgres://USER@HOST:PORT/DB[?password_file=PATH&ca=PATH].
    #[arg(long, value_parser = UrlParser)]
    pub db: StoreUrl,
    /// Keep this much history: 90d, 48h.
    #[arg(long, value_parser = crate::graph::parse_window)]
    pub older_than: Duration,
    /// [default: audit.jsonl in the current directory]
    #[command(flatten)]
    pub audit: super::audit::AuditArgs,
}

/// Parses a `--db` (a ledger path or a store URL) without echoing a refused value: it may hold a
/// password.
#[derive(Debug, Clone, Copy)]
pub struct DbParser;

impl clap::builder::TypedValueParser for DbParser {
    type Value = store::Db;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<store::Db, clap::Error> {
        redacted(arg, value, |s| s.parse())
    }
}

/// Parses a store URL without echoing a refused value.
#[derive(Debug, Clone, Copy)]
pub struct UrlParser;

impl clap::builder::TypedValueParser for UrlParser {
    type Value = StoreUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreUrl, clap::Error> {
        redacted(arg, value, StoreUrl::parse)
    }
}

/// Parses a `--to`: the ingest service (https://) or the store (postgres://), without echoing
/// a refused value.
#[derive(Debug, Clone, Copy)]
pub struct TargetParser;

impl clap::builder::TypedValueParser for TargetParser {
    type Value = store::ShipTo;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<store::ShipTo, clap::Error> {
        redacted(arg, value, |s| {
            if StoreUrl::is_url(s) {
                StoreUrl::parse(s).map(store::ShipTo::Store)
            } else {
                store::ShipTo::parse_ingest(s)
            }
        })
    }
}

fn redacted<T>(
    arg: Option<&clap::Arg>,
    value: &std::ffi::OsStr,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, clap::Error> {
    let name = arg.map(|a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str()))).unwrap_or_default();
    let fail =
        |why: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{name}: {why}\n"));
    let text = value.to_str().ok_or_else(|| fail("not UTF-8".into()))?;
    parse(text).map_err(fail)
}

pub fn ship(args: ShipArgs) -> anyhow::Result<Outcome> {
    if !args.db.exists() {
        anyhow::bail!("{}: no such ledger", args.db.display());
    }
    let batch_rows = usize::try_from(args.batch_rows).unwrap_or(usize::MAX);
    let (shipped, refused) = match &args.to {
        store::ShipTo::Store(url) => {
            anyhow::ensure!(
                args.config.is_none(),
                "--config is for shipping through the ingest service (https://)"
            );
            (store::ship_file(&args.db, url, batch_rows), Default::default())
        }
        store::ShipTo::Ingest(addr) => {
            let path =
                args.config.as_deref().context("--to https://... ships as a host: give its --config")?;
            let config = crate::agent::config::Config::load(path)?;
            let tls = crate::pki::TlsStore::load(&config.tls, &config.trust_domain, &config.identities())?;
            let out = store::Outbound { tls, identities: config.identities(), addr: addr.clone() };
            match store::ship_through(&args.db, &out, batch_rows) {
                Ok((s, answer)) => (Ok(s), answer.refused),
                Err(e) => (Err(e), Default::default()),
            }
        }
    };
    let shipped = shipped.with_context(|| format!("shipping {} to {}", args.db.display(), args.to))?;
    println!(
        "shipped {} rows in {} batches from {} to {}",
        shipped.rows,
        shipped.batches,
        args.db.display(),
        args.to
    );
    for (cause, n) in &refused {
        println!("refused {n} rows: {cause}");
    }
    Ok(Outcome::Success)
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<Outcome> {
    match cmd {
        StoreCommand::Init(args) => {
            let done = store::init(&args.db)?;
            println!(
                "{}: schema version {}, roles cordon_ingest, cordon_operator, cordon_reviewer",
                args.db, done.version
            );
            Ok(Outcome::Success)
        }
        StoreCommand::Serve(args) => serve(args),
        StoreCommand::Prune(args) => {
            let now_hour = crate::ledger::unix_ms(SystemTime::now()).div_euclid(3_600_000);
            let hours = i64::try_from(args.older_than.as_secs() / 3600).unwrap_or(i64::MAX);
            let audit = args.audit.open(crate::audit::DEFAULT_FILE.into())?;
            let pruned = store::prune(&args.db, now_hour.saturating_sub(hours));
            let result = pruned.as_ref().map(|p| (p.partitions, p.rows)).map_err(|e| e.to_string());
            let record = crate::audit::Record::store_prune(&args.db.to_string(), args.older_than, result);
            super::audit::record(&audit, &record)?;
            let pruned = pruned?;
            println!(
                "pruned {}: dropped {} day partitions, deleted {} rows",
                args.db, pruned.partitions, pruned.rows
            );
            Ok(Outcome::Success)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    use std::io::Write as _;
    let enrol = match (args.host, args.issuer, args.join_token_file) {
        (Some(host), Some(url), Some(token)) => {
            let mut issuer = crate::pki::issuer::IssuerSettings::parse(&url, Some(token))
                .map_err(|e| anyhow::anyhow!("--issuer: {e}"))?;
            if let Some(ms) = args.revocation_poll_ms {
                issuer.revocation_poll = Duration::from_millis(ms);
            }
            Some(store::identity::Enrolment { host, issuer })
        }
        _ => None,
    };
    let options = store::ingest::IngestOptions { db: args.db, ca: args.ca, tls_dir: args.tls_dir };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cordon-store")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let identity = std::sync::Arc::new(store::identity::Identity::start(&options, enrol).await?);
        let ingest = store::ingest::Ingest::open(&options, identity.clone()).await?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let life = crate::proxy::Lifecycle::new();
        // Renewal, the revocation poll and the file watch stop with the service.
        let background = tokio_util::sync::CancellationToken::new();
        identity.spawn(&background);
        // Signal handlers before the address is announced: a script that stops the service as
        // soon as it has read the address gets a clean stop.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let addr = listener.local_addr()?;
        let run = tokio::spawn(store::ingest::serve(listener, ingest, life.clone()));
        // The address on stdout, for scripts that listen on port 0.
        writeln!(std::io::stdout().lock(), "listening on {addr}")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        life.stop_accepting.cancel();
        background.cancel();
        let _ = run.await;
        tracing::info!("ingest service stopped");
        Ok(Outcome::Success)
    })
}
