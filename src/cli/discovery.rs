//! `cordon discovery --dir DIR`: show what cordon reads from a Synapse `file_output` directory.
//!
//! Owns only the presentation (a table or JSON on stdout, refused files on stderr); reading and
//! checking the files is `cordon_discovery`'s job. Exit 2 when the directory cannot be read, 0
//! otherwise, even with refused files, so it can run in health checks that only read stdout.

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;
use cordon_discovery::{Backend, Snapshot, load_dir};
use serde_json::{Value, json};

use super::Outcome;
use crate::base::escape;

/// How the snapshot is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned table: one line per backend.
    Text,
    /// One JSON document with every field, for scripts.
    Json,
}

/// Arguments of `cordon discovery`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory Synapse's file_output writes (one `<service>.json` per service).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Reads the directory once and prints it.
pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let snapshot = load_dir(&args.dir)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Text => write_text(&mut out, &snapshot)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &to_json(&snapshot))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    let mut err = std::io::stderr().lock();
    for problem in snapshot.problems() {
        let problem = problem.to_string();
        let problem = escape::text(&problem);
        writeln!(err, "{}", crate::logging::command_line("WARN", &format!("discovery: refused {problem}")))?;
    }
    Ok(Outcome::Success)
}

/// "mtls:14000" or "plaintext".
fn transport(backend: &Backend) -> String {
    match backend.mtls_port {
        Some(port) => format!("mtls:{port}"),
        None => "plaintext".to_string(),
    }
}

fn write_text(out: &mut impl Write, snapshot: &Snapshot) -> std::io::Result<()> {
    let header = ["SERVICE", "BACKEND", "TRANSPORT", "WEIGHT", "NAME"].map(str::to_string);
    let mut rows = vec![header];
    let (mut mtls, mut plaintext) = (0usize, 0usize);
    for (service, backends) in snapshot.services() {
        if backends.is_empty() {
            rows.push([
                escape::cell(service).into_owned(),
                "(no backends)".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for b in backends {
            if b.is_mtls() {
                mtls += 1;
            } else {
                plaintext += 1;
            }
            let host = escape::cell(&b.host);
            let address = if b.host.contains(':') {
                format!("[{host}]:{}", b.port)
            } else {
                format!("{host}:{}", b.port)
            };
            rows.push([
                escape::cell(service).into_owned(),
                address,
                transport(b),
                b.weight.map_or_else(|| "-".to_string(), |w| w.to_string()),
                b.name.as_deref().map_or_else(|| "-".to_string(), |n| escape::text(n).into_owned()),
            ]);
        }
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(
        out,
        "\n{} services, {} backends ({mtls} mtls, {plaintext} plaintext), {} refused files in {}",
        snapshot.service_count(),
        mtls + plaintext,
        snapshot.problems().len(),
        snapshot.dir().display()
    )
}

fn to_json(snapshot: &Snapshot) -> Value {
    let services: Vec<Value> = snapshot
        .services()
        .map(|(service, backends)| {
            let backends: Vec<Value> = backends
                .iter()
                .map(|b| {
                    let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
                    if let Value::Object(map) = &mut v {
                        let kind = if b.is_mtls() { "mtls" } else { "plaintext" };
                        map.insert("transport".to_string(), Value::from(kind));
                    }
                    v
                })
                .collect();
            json!({ "service": service, "backends": backends })
        })
        .collect();
    let problems: Vec<Value> = snapshot
        .problems()
        .iter()
        .map(|p| json!({ "file": p.file.display().to_string(), "message": p.message }))
        .collect();
    json!({
        "dir": snapshot.dir().display().to_string(),
        "services": services,
        "problems": problems,
    })
}
