//! The command line tested whole: clap's own consistency checks over every subcommand, every
//! `cordon ...` line the README and docs/ show (the docs are executable), and every command run
//! with `CORDON_LOG` set, as an operator's environment would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use cordon::cli::Cli;

#[test]
fn the_clap_tree_passes_its_own_checks() {
    // Panics, naming the argument, on clashing ids, flags, or value types anywhere in the tree.
    Cli::command().debug_assert();
}

/// One command line shown in a document.
#[derive(Debug)]
struct Shown {
    file: PathBuf,
    line: usize,
    text: String,
}

/// Where a command starts in a shell line: the line's start (after a `$ ` prompt, a cron
/// schedule, `sudo` or `VAR=value` assignments), or after a pipe, `&&` or `;`.
fn commands_in(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let line = line.trim_start().trim_start_matches("$ ");
    // A comment, whole line or trailing, shows no command.
    let line = match line.find(" #") {
        _ if line.starts_with('#') => "",
        Some(i) => &line[..i],
        None => line,
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    // A crontab line: five schedule fields, then the command.
    let start =
        if words.len() > 5 && words[..5].iter().all(|w| w.chars().all(|c| "0123456789*/,-".contains(c))) {
            line.find(words[5]).unwrap_or(0)
        } else {
            0
        };
    let mut rest = &line[start..];
    loop {
        let head = rest.trim_start();
        let mut tokens = head.split_whitespace().peekable();
        let mut skipped = 0;
        while let Some(t) = tokens.peek() {
            if *t == "sudo" || (t.contains('=') && t.chars().next().is_some_and(|c| c.is_ascii_uppercase())) {
                skipped += 1;
                tokens.next();
            } else {
                break;
            }
        }
        if tokens.next() == Some("cordon") {
            let body: Vec<&str> = head.split_whitespace().skip(skipped + 1).collect();
            out.push(body.join(" "));
        }
        match rest.find(['|', '&']) {
            Some(i) => rest = rest[i + 1..].trim_start_matches(['|', '&']),
            None => break,
        }
    }
    out
}

/// Every `cordon ...` line in the fenced code blocks of a markdown file, continuation lines
/// joined, and in the first column of its command tables (headed "command").
fn shown_in(file: &Path) -> Vec<Shown> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut in_block = false;
    // Inside a table whose first column is headed "command" (a command reference).
    let mut in_commands = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let number = i + 1;
        i += 1;
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let mut joined = line.to_string();
            while joined.trim_end().ends_with('\\') && i < lines.len() {
                joined = format!("{} {}", joined.trim_end().trim_end_matches('\\'), lines[i]);
                i += 1;
            }
            for text in commands_in(&joined) {
                out.push(Shown { file: file.to_path_buf(), line: number, text });
            }
        } else if !line.starts_with('|') {
            in_commands = false;
        } else if line.starts_with("| command |") {
            in_commands = true;
        } else if let Some(row) = line.strip_prefix("| ").filter(|_| in_commands) {
            // The first cell; escaped pipes (`a\|b`) have no spaces around them.
            let cell = row.split(" | ").next().unwrap_or_default();
            for (i, span) in cell.split('`').enumerate() {
                if let Some(command) = span.strip_prefix("cordon ").filter(|_| i % 2 == 1) {
                    out.push(Shown {
                        file: file.to_path_buf(),
                        line: number,
                        text: command.replace("\\|", "|"),
                    });
                }
            }
        }
    }
    out
}

/// A sample value for a placeholder: CAPS (`DIR`, `N`) or `<...>`.
fn sample(placeholder: &str) -> String {
    let name = placeholder.trim_matches(['<', '>']).to_ascii_uppercase();
    match name.as_str() {
        "N" => "7".into(),
        "DURATION" | "TTL" => "24h".into(),
        "ADDR" => "127.0.0.1:8443".into(),
        "URL" => "https://127.0.0.1:8443".into(),
        "TD" => "example.internal".into(),
        "SHELL" => "bash".into(),
        _ => name.to_ascii_lowercase().replace('_', "-"),
    }
}

/// The argv a shown line stands for: comments and redirections cut, `[optional]` parts kept,
/// `a|b` alternatives as their first, `...` repetitions once, placeholders filled in.
fn argv(text: &str) -> Vec<String> {
    let mut words = vec!["cordon".to_string()];
    for raw in text.split_whitespace() {
        if raw.starts_with(['#', '>', '|', '&', ';']) || raw.starts_with('<') && !raw.ends_with('>') {
            break;
        }
        if let Some(scheme) = raw.strip_suffix("...").filter(|r| r.ends_with("://")) {
            words.push(format!("{scheme}cordon@127.0.0.1:5432/fleet"));
            continue;
        }
        let word = raw.trim_matches(['[', ']', '(', ')']).trim_end_matches("...");
        let word = word.split('|').next().unwrap_or_default();
        let word = word.trim_matches(['\'', '"']);
        if word.is_empty() {
            continue;
        }
        let is_placeholder = (word.starts_with('<') && word.ends_with('>'))
            || (!word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        words.push(if is_placeholder { sample(word) } else { word.to_string() });
    }
    words
}

#[test]
fn every_command_line_the_docs_show_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let shown: Vec<Shown> = files.iter().flat_map(|f| shown_in(f)).collect();
    // The fixtures were found: the README's command reference alone shows more than twenty.
    assert!(shown.len() > 20, "found only {} command lines: {shown:#?}", shown.len());
    let mut broken = Vec::new();
    for s in &shown {
        let argv = argv(&s.text);
        if let Err(e) = Cli::try_parse_from(&argv) {
            let first = e.to_string().lines().take(2).collect::<Vec<_>>().join(" ");
            broken.push(format!(
                "{}:{}: cordon {}\n    parsed as {argv:?}\n    {first}",
                s.file.display(),
                s.line,
                s.text
            ));
        }
    }
    assert!(broken.is_empty(), "command lines in the docs that no longer parse:\n{}", broken.join("\n"));
}

#[test]
fn the_extraction_sees_pipes_prompts_cron_and_placeholders() {
    assert_eq!(
        commands_in("zcat a.gz | cordon import haproxy-log --db l.db -"),
        ["import haproxy-log --db l.db -"]
    );
    assert_eq!(commands_in("$ CORDON_LOG=debug cordon graph --db x"), ["graph --db x"]);
    assert_eq!(commands_in("*/10 * * * * cordon merge --out a b"), ["merge --out a b"]);
    assert!(commands_in("digraph cordon {").is_empty());
    assert!(commands_in("# HAProxy bound it; cordon listens on 127.0.0.1:3220").is_empty());
    assert!(commands_in("== ratios (same run; cordon = cordon-enforce)").is_empty());
    assert_eq!(
        argv("ship --to postgres://... | tail -1"),
        ["cordon", "ship", "--to", "postgres://cordon@127.0.0.1:5432/fleet"]
    );
    assert_eq!(
        argv("ca serve --dir DIR --listen ADDR [--log FILE] # note"),
        ["cordon", "ca", "serve", "--dir", "dir", "--listen", "127.0.0.1:8443", "--log", "file"]
    );
    assert_eq!(
        argv("graph --db L [--format text|json]"),
        ["cordon", "graph", "--db", "l", "--format", "text"]
    );
}

/// Every leaf command, as its path of names.
fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
    let subs: Vec<_> = cmd.get_subcommands().filter(|s| s.get_name() != "help").collect();
    if subs.is_empty() {
        out.push((path.clone(), cmd.clone()));
    }
    for s in subs {
        let mut p = path.clone();
        p.push(s.get_name().to_string());
        leaves(s, p, out);
    }
}

/// Arguments that get a leaf past parsing without doing anything lasting: every required option
/// filled with a path that does not exist (or a value its parser takes), plus what a few leaves
/// need to stop early.
fn args_for(path: &[String], cmd: &clap::Command, absent: &Path) -> Vec<String> {
    let mut args = path.to_vec();
    let value = |id: &str| -> String {
        match id {
            "listen" | "admin" => "127.0.0.1:1".into(),
            "trust_domain" => "example.internal".into(),
            "older_than" | "ttl" | "leaf_ttl" => "1d".into(),
            "db" | "to" if path[0] != "import" => {
                format!("postgres://cordon@127.0.0.1:1/absent?password_file={}", absent.display())
            }
            // Each command its own absent paths: `ca init` creates its directory, which
            // `ca serve` must not then find.
            _ => absent.join(path.join("-")).join(id).display().to_string(),
        }
    };
    for arg in cmd.get_arguments().filter(|a| a.is_required_set()) {
        let id = arg.get_id().as_str();
        match arg.get_long() {
            Some(long) => args.extend([format!("--{long}"), value(id)]),
            None => args.push(value(id)),
        }
    }
    let extra: &[&str] = match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["lockdown"] => &["--config", "absent.toml", "--print"],
        ["status"] => &["--admin", "127.0.0.1:1"],
        ["demo"] => &["--keep", "."],
        ["check"] => &["--policy", "absent.toml", "web", "db"],
        ["mode"] => &["--policy", "absent.toml", "db", "learn"],
        _ => &[],
    };
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn every_command_runs_with_cordon_log_set() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent");
    let mut all = Vec::new();
    leaves(&Cli::command(), Vec::new(), &mut all);
    assert!(all.len() > 20, "found {} commands", all.len());
    let mut crashed = Vec::new();
    for (path, cmd) in &all {
        let args = args_for(path, cmd, &absent);
        for env in [("CORDON_LOG", "info"), ("CORDON_LOG_FORMAT", "json")] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
                .args(&args)
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env(env.0, env.1)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("cordon {args:?} did not stop within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !matches!(status.code(), Some(0..=2)) || stderr.contains("panicked") {
                crashed.push(format!("{}=… cordon {}: {status}\n{stderr}", env.0, args.join(" ")));
            }
        }
    }
    assert!(crashed.is_empty(), "commands that crashed:\n{}", crashed.join("\n"));
}

#[test]
fn ca_serve_and_rotate_take_their_issuance_log_with_a_log_filter_set() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let log = dir.path().join("issuance.jsonl");
    let (ca_s, log_s) = (ca.to_str().unwrap(), log.to_str().unwrap());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args(args)
            .env_clear()
            .env("CORDON_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let init =
        run(&["ca", "init", "--dir", ca_s, "--trust-domain", "example.internal"]).wait_with_output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    // The documented form: the filter from the environment, --log naming the issuance log.
    let mut serve = run(&["ca", "serve", "--dir", ca_s, "--listen", "127.0.0.1:0", "--log", log_s]);
    let mut first = String::new();
    BufReader::new(serve.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // Its log line, read as it comes (a line naming the issuance log), with a deadline.
    let stderr = serve.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l: &String| l.contains("signing service listening")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    serve.kill().unwrap();
    let _ = serve.wait();
    let seen = seen.join("\n");
    assert!(first.starts_with("listening on 127.0.0.1:"), "stdout {first:?}, stderr {seen}");
    assert!(seen.contains(&format!("log={log_s}")), "the service names its issuance log: {seen}");

    let rotate =
        run(&["--log", "warn", "ca", "rotate", "--dir", ca_s, "--log", log_s, "--log-filter", "info"])
            .wait_with_output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&rotate.stderr);
    assert!(matches!(rotate.status.code(), Some(0 | 1)), "{}: {stderr}", rotate.status);
    assert!(!stderr.contains("panicked"), "{stderr}");

    let cli = Cli::try_parse_from([
        "cordon",
        "ca",
        "rotate",
        "--dir",
        "ca",
        "--log",
        "i.jsonl",
        "--log-filter",
        "warn",
    ])
    .unwrap();
    assert_eq!(cli.log.as_deref(), Some("warn"), "--log-filter reaches the logging set-up");
}
