//! Operator basics from the built binary: shell completions and the man page, generated from the
//! clap tree, load in the shells and name every command.

mod support;

use std::process::Command;

use support::{cordon, cordon_ok};

/// The top-level commands, as the help lists them.
const COMMANDS: [&str; 8] = ["agent", "mode", "ca", "ship", "store", "status", "completions", "man"];

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let script = cordon_ok(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cordon.bash");
    std::fs::write(&file, &script).unwrap();
    // Loaded as bash-completion would, then asked what follows `cordon ` and `cordon ca `.
    let probe = format!(
        "source {}\ncomplete -p cordon\n\
         COMP_WORDS=(cordon ''); COMP_CWORD=1; COMP_LINE='cordon '; COMP_POINT=7; _cordon cordon '' cordon\n\
         echo \"top: ${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(cordon ca ''); COMP_CWORD=2; COMP_LINE='cordon ca '; COMP_POINT=10; _cordon cordon '' ca\n\
         echo \"ca: ${{COMPREPLY[*]}}\"\n",
        file.display()
    );
    let out = Command::new("bash").args(["--norc", "-c", &probe]).output().expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("-F _cordon cordon"), "{stdout}");
    let top = stdout.lines().find(|l| l.starts_with("top: ")).unwrap();
    for c in COMMANDS {
        assert!(top.split_whitespace().any(|w| w == c), "{c} not completed: {top}");
    }
    let ca = stdout.lines().find(|l| l.starts_with("ca: ")).unwrap();
    for c in ["init", "serve", "token", "rotate"] {
        assert!(ca.split_whitespace().any(|w| w == c), "ca {c} not completed: {ca}");
    }
}

#[test]
fn completions_for_every_shell_and_a_clear_error_for_an_unknown_one() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = cordon_ok(&["completions", shell]);
        assert!(script.contains("cordon") && script.contains("serve"), "{shell}: {script}");
    }
    let out = cordon(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

#[test]
fn the_man_page_is_roff_naming_every_command() {
    let page = cordon_ok(&["man"]);
    assert!(page.starts_with(".ie") || page.contains(".TH cordon 1"), "{}", &page[..page.len().min(300)]);
    assert!(page.contains(".TH cordon 1"), "no title header");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "no version");
    for c in COMMANDS {
        assert!(page.contains(&format!("cordon\\-{c}")) || page.contains(c), "{c} missing");
    }
    // man(1) itself renders it, where it is installed.
    if Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cordon.1");
        std::fs::write(&file, &page).unwrap();
        let out = Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("SUBCOMMANDS"), "{text}");
    }
}
