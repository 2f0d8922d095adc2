//! `cordon demo`: a whole rollout on loopback, nothing to configure.
//!
//! Five toy services on their own loopback addresses (127.0.0.2 to .6), each with its own cordon
//! agent (the real agent: real TLS, real ledgers), one host that has not migrated (plaintext), and
//! an address nobody knows. Someone holding cache's certificate dials db by hand while the fleet
//! learns. The demo learns, reviews (the declared upstreams of every agent against the traffic:
//! the stolen certificate gets an explicit deny), enforces db, shows the attacker refused, and
//! rolls back. Review steps run the real `cordon` commands, printed so
//! they can be typed again (`--keep DIR` keeps the world for that).

mod stolen;
mod world;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use self::world::{HOSTS, LEGACY, STRANGER, TRUST_DOMAIN, World, cordon, start_app};
use crate::agent::Agent;

/// What the demo was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the world in this directory instead of a temporary one.
    pub keep: Option<PathBuf>,
}

/// Requests per learned edge: (caller, callee, count). batch is a nightly job: rare.
const TRAFFIC: &[(&str, &str, usize)] = &[
    ("web", "api", 40),
    ("web", "db", 25),
    ("web", "cache", 30),
    ("api", "db", 60),
    ("api", "cache", 20),
    ("batch", "db", 2),
];

/// Runs the demo to the end (or until Ctrl-C, cleaning up either way).
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut world = World::create(options.keep.as_deref())?;
        let outcome = tokio::select! {
            r = scenario(&mut world) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        world.shutdown().await;
        match (&outcome, &options.keep) {
            (Ok(()), Some(dir)) => say(&format!(
                "\nThe world is kept in {}: cd there and try the commands above again.",
                dir.display()
            )),
            (Ok(()), None) => say("\nCleaned up. `cordon demo --keep DIR` keeps the world to poke at."),
            (Err(_), _) => say("\nThe demo stopped; cleaned up."),
        }
        outcome
    })
}

fn say(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn step(n: u32, title: &str, why: &str) {
    say(&format!("\n\x1b[1m== Step {n}: {title}\x1b[0m"));
    for line in why.lines() {
        say(&format!("   {line}"));
    }
}

/// Runs `cordon ARGS` in the world directory, printing the command and its output.
fn show(world: &World, args: &[&str]) -> anyhow::Result<(bool, String)> {
    say(&format!("\n   $ cordon {}", args.join(" ")));
    let (ok, out, err) = cordon(&world.dir, args)?;
    for line in out.lines().chain(err.lines()) {
        say(&format!("   | {line}"));
    }
    Ok((ok, out))
}

async fn scenario(world: &mut World) -> anyhow::Result<()> {
    let started = Instant::now();
    step(
        1,
        "a fleet with a soft centre",
        &format!(
            "Five services, each on its own host (a loopback address): web, api, db, cache and a nightly\n\
             batch job. Today any of them can reach any other. A sixth host, {} ({}), has not\n\
             migrated to cordon yet and talks plaintext. Everything lives in {}.",
            LEGACY.0,
            LEGACY.1,
            world.dir.display()
        ),
    );
    show(world, &["ca", "init", "--dir", "ca", "--trust-domain", TRUST_DOMAIN])?;
    for host in HOSTS {
        let out = format!("tls/{}", host.name);
        let (ok, _, err) =
            cordon(&world.dir, &["cert", "issue", "--ca", "ca", "--service", host.name, "--out", &out])?;
        if !ok {
            bail!("issuing a certificate for {}: {err}", host.name);
        }
    }
    say("   Issued one certificate per host: spiffe://demo.internal/service/<name>.");
    std::fs::write(
        world.policy(),
        "# The demo fleet's policy: everything learns to begin with.\n[modes]\n\"*\" = \"learn\"\n",
    )?;
    world.write_discovery(LEGACY.0, &[(IpAddr::V4(LEGACY.1), 8080, None)])?;

    // Apps and agents of the hosts that serve something, then the callers.
    for host in HOSTS {
        let app = if host.serves { Some(start_app(host.name, host.ip).await?) } else { None };
        let agent = Agent::start(world.agent_config(host, app)?)
            .await
            .with_context(|| format!("starting the agent of {}", host.name))?;
        if let (Some(app), Some(inbound)) = (app, agent.bound().service(host.name)) {
            world.write_discovery(host.name, &[(IpAddr::V4(host.ip), app.port(), Some(inbound.port()))])?;
        }
        world.agents.push((host.name, agent));
    }
    say(
        "   Started a toy app and a cordon agent on every host; discovery lists each service with its\n   cordon_mtls_port, as Nerve would register it.",
    );
    wait_for_backends(world).await?;

    step(
        2,
        "learn",
        "Every connection goes through cordon over mutual TLS, and every connection is allowed.\n\
         The destination's agent records who called, proven by the caller's certificate.",
    );
    // When db's first call had certainly been recorded: the lower end of its evidence.
    let mut db_first_done = None;
    for (caller, callee, n) in TRAFFIC {
        for i in 0..*n {
            call(world, caller, callee, &format!("request {i}")).await?;
            if *callee == "db" && db_first_done.is_none() {
                db_first_done = Some(Instant::now());
            }
        }
        say(&format!("   {caller:>6} -> {callee:<6} {n:>3} requests"));
    }
    let api_inbound = inbound_of(world, "api")?;
    for i in 0..5 {
        plaintext(LEGACY.1.into(), api_inbound, &format!("report {i}")).await?;
    }
    say(&format!(
        "   {:>6} -> api      5 requests in plaintext (not migrated; named by its address)",
        LEGACY.0
    ));
    let sample = call(world, "web", "db", "SELECT 1").await?;
    say(&format!("   web asked db \"SELECT 1\" and got back: \"{sample}\""));
    let db_inbound = inbound_of(world, "db")?;
    // The evidence for db spans at least from its first call's end to the last call's start.
    let db_span = db_first_done.map_or(Duration::ZERO, |t| t.elapsed());
    let stolen = stolen::dial(world, "cache", "db", db_inbound, "SELECT * FROM users").await?;
    if stolen.is_empty() {
        bail!("in learn mode the stolen certificate should have been let in");
    }
    say("    cache -> db      1 request by hand, with cache's certificate copied off the cache host.");
    say("   Learning lets it in and records it like any caller. But every agent also recorded the");
    say("   upstreams it is configured with, and cache's cordon.toml has none: cache never dials db.");
    wait_for_ledger(world).await?;

    step(
        3,
        "the learned graph",
        "Each host keeps its own ledger (with the upstreams its agent is configured with); merge\n\
         them into one fleet view and look at it. DECLARED says whether the caller declares the edge.",
    );
    let mut args = vec!["merge", "--out", "fleet.db"];
    let ledgers: Vec<String> = HOSTS.iter().map(|h| format!("state/{}/ledger.db", h.name)).collect();
    args.extend(ledgers.iter().map(String::as_str));
    show(world, &args)?;
    show(world, &["graph", "--db", "fleet.db"])?;
    // The history every readiness check asks for, fitted to the demo's own traffic.
    let window = match db_span.as_secs() {
        0 => "0".to_owned(),
        s => format!("{s}s"),
    };
    let held = match db_span.as_secs() {
        0 => "under a second".to_owned(),
        _ => crate::policy::days_text(db_span),
    };
    say(&format!(
        "   db's evidence spans {held}: the demo's whole learning phase. Readiness asks for 30 days\n   \
         of history by default, so that a weekly or monthly job has had its chance to show up; the\n   \
         demo passes --min-history {window} (its own traffic's length) to mode, diff and report instead."
    ));

    step(
        4,
        "what if we enforced db right now?",
        "With no intentions, enforcing db would cut off every caller. cordon checks the flip against\n\
         the recorded traffic first and refuses it:",
    );
    let (ok, _) = show(
        world,
        &["mode", "--policy", "policy.toml", "db", "enforce", "--db", "fleet.db", "--min-history", &window],
    )?;
    if ok {
        bail!("the preflight should have refused to enforce db with an empty policy");
    }

    step(
        5,
        "propose intentions from what was learned",
        "Every edge proven by mTLS and declared by its caller becomes an allow rule with its evidence.\n\
         cache declares no upstream, yet was seen calling db: not through a configured upstream, so\n\
         the proposal denies it explicitly. Plaintext callers are only listed as comments: nothing\n\
         unproven is allowed silently. We adopt the proposal as it is.",
    );
    let (ok, proposal) = show(world, &["propose", "--db", "fleet.db", "--policy", "policy.toml"])?;
    if !ok {
        bail!("cordon propose failed");
    }
    if !proposal.contains("source = \"cache\"\ndestination = \"db\"\naction = \"deny\"") {
        bail!("the proposal should deny the stolen certificate's cache -> db");
    }
    let mut policy = std::fs::read_to_string(world.policy())?;
    policy.push('\n');
    policy.push_str(&proposal);
    world.replace(&world.policy(), &policy)?;

    step(
        6,
        "review",
        "Per service: would anyone be cut off? Who calls rarely (a nightly job is the classic outage)?\n\
         Who still talks plaintext? diff gives the same readiness as the preflight of `cordon mode`,\n\
         every reason with it (api: its caller reports still talks plaintext).",
    );
    show(world, &["diff", "--db", "fleet.db", "--policy", "policy.toml", "--min-history", &window])?;
    show(world, &["check", "--policy", "policy.toml", "web", "db"])?;
    show(world, &["check", "--policy", "policy.toml", "cache", "db"])?;

    step(
        7,
        "enforce db, and only db",
        "The preflight passes now: every caller is allowed, and cache is denied on purpose. The\n\
         demo's ledger is a minute old, so it passes the demo's --min-history; on a real fleet keep\n\
         the default 30d, so that a weekly or monthly job has had its chance to show up first.\n\
         Every agent picks up the new policy within a second.",
    );
    let (ok, _) = show(
        world,
        &["mode", "--policy", "policy.toml", "db", "enforce", "--db", "fleet.db", "--min-history", &window],
    )?;
    if !ok {
        bail!("enforcing db was refused after adopting the proposal");
    }
    wait_for_mode(world.agent("db"), "db", "enforce").await?;
    let reply = call(world, "web", "db", "SELECT 2").await?;
    say(&format!("   web -> db   still works: \"{reply}\""));
    let refused = stolen::dial(world, "cache", "db", db_inbound, "DROP TABLE users").await?;
    if !refused.is_empty() {
        bail!("cache -> db should have been refused, got {refused:?}");
    }
    say("   cache -> db refused: the stolen certificate is valid, but cache declares no upstream to db,");
    say("   so the adopted proposal denies it. db's app never saw the connection.");
    let stranger = plaintext(STRANGER.into(), db_inbound, "hello?").await?;
    if !stranger.is_empty() {
        bail!("plaintext to an enforcing db should be refused");
    }
    say(&format!("   {STRANGER} -> db (plaintext, unknown host) refused: enforce takes mTLS only."));
    let denial = wait_for_denial(world).await?;
    say("   The decision log (JSON lines, for your SIEM) has the denial:");
    say(&format!("   | {denial}"));

    step(8, "roll back", "Flipping back to learn is never preflighted and takes effect at once.");
    show(world, &["mode", "--policy", "policy.toml", "db", "learn"])?;
    wait_for_mode(world.agent("db"), "db", "learn").await?;
    let reply = stolen::dial(world, "cache", "db", db_inbound, "GET stats").await?;
    say(&format!("   cache -> db passes again while db learns (recorded as would-deny): \"{reply}\""));

    step(
        9,
        "a picture to decide from",
        "A self-contained HTML report: the graph, readiness per service, the proposal.",
    );
    wait_for_ledger(world).await?;
    show(world, &args)?;
    let (ok, _) = show(
        world,
        &[
            "report",
            "--db",
            "fleet.db",
            "--policy",
            "policy.toml",
            "--out",
            "report.html",
            "--min-history",
            &window,
        ],
    )?;
    if !ok {
        bail!("cordon report failed");
    }
    say(&format!("   Open {} in a browser.", keep_report(world).display()));
    say(&format!("\nDone in {:.1} s.", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Where the report can be opened after the demo: in the world when it is kept, otherwise copied
/// to `cordon-demo-report.html` in the current directory (the temporary world is removed).
fn keep_report(world: &World) -> PathBuf {
    let report = world.path("report.html");
    if world.kept() {
        return report;
    }
    let copy = PathBuf::from("cordon-demo-report.html");
    match std::fs::copy(&report, &copy) {
        Ok(_) => std::fs::canonicalize(&copy).unwrap_or(copy),
        Err(_) => report,
    }
}

fn inbound_of(world: &World, service: &str) -> anyhow::Result<SocketAddr> {
    world.agent(service).bound().service(service).with_context(|| format!("{service} has no inbound"))
}

/// One request from `caller`'s app through its cordon outbound to `callee`. An empty answer
/// means the connection was refused.
async fn call(world: &World, caller: &str, callee: &str, request: &str) -> anyhow::Result<String> {
    let addr = world
        .agent(caller)
        .bound()
        .upstream(callee)
        .with_context(|| format!("{caller} has no upstream for {callee}"))?;
    exchange(TcpStream::connect(addr).await?, request).await
}

/// One plaintext request from `source` straight to an inbound listener.
async fn plaintext(source: IpAddr, to: SocketAddr, request: &str) -> anyhow::Result<String> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    exchange(socket.connect(to).await?, request).await
}

async fn exchange(mut stream: TcpStream, request: &str) -> anyhow::Result<String> {
    let talk = async {
        stream.write_all(request.as_bytes()).await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        // A refused connection may end with a reset: that is an empty answer, not an error.
        let _ = stream.read_to_end(&mut reply).await;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), talk).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(_)) => Ok(String::new()),
        Err(_) => bail!("no answer within 10 s"),
    }
}

async fn poll<F: FnMut() -> bool>(what: &str, mut ready: F) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while !ready() {
        if Instant::now() > until {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

async fn wait_for_backends(world: &World) -> anyhow::Result<()> {
    poll("discovery to list every service on every host", || {
        world.agents.iter().all(|(_, agent)| {
            agent.status()["upstreams"].as_array().is_some_and(|ups| {
                ups.iter().all(|u| u["backends"].as_array().is_some_and(|b| !b.is_empty()))
            })
        })
    })
    .await
}

async fn wait_for_mode(agent: &Agent, service: &str, mode: &str) -> anyhow::Result<()> {
    poll(&format!("{service} to be in {mode} mode"), || {
        agent.status()["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == service && s["mode"] == mode))
    })
    .await
}

/// Waits until every agent's recorder has written what it received.
async fn wait_for_ledger(world: &World) -> anyhow::Result<()> {
    poll("the ledgers to be written", || {
        world.agents.iter().all(|(_, agent)| {
            let l = &agent.status()["ledger"];
            l["events_written"] == l["events_received"]
        })
    })
    .await?;
    // The recorder counts before it commits; give the transaction its moment.
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(())
}

async fn wait_for_denial(world: &World) -> anyhow::Result<String> {
    let path = world.decision_log();
    let mut found = String::new();
    poll("the denial in the decision log", || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        match text.lines().find(|l| l.contains("\"denied\"") && l.contains("\"cache\"")) {
            Some(l) => {
                found = l.to_string();
                true
            }
            None => false,
        }
    })
    .await?;
    Ok(found)
}
