//! The manual pages as a Debian user meets them: lint-clean, and shipped
//! with every page they refer to.

mod common;

use std::process::Command;

use common::*;

const PAGES: [&str; 2] = ["sheepdog.1", "sheepdog.toml.5"];

fn page(name: &str) -> String {
    let output = Command::new(BIN).args(["man", name]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_pages_are_clean_for_mandoc_lint() {
    let dir = tempfile::tempdir().unwrap();
    for name in PAGES {
        let path = dir.path().join(name);
        std::fs::write(&path, page(name)).unwrap();
        let lint = Command::new("mandoc")
            .args(["-T", "lint"])
            .arg(&path)
            .output()
            .expect("mandoc (tests/run.sh installs it)");
        let found = String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
        assert!(lint.status.success() && found.is_empty(), "{name}: {found}");
        // And it renders to text a person can read.
        let text = Command::new("mandoc").args(["-T", "html"]).arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("id=\"NAME\"") && text.contains("id=\"SEE_ALSO\""),
            "{name}: {text}"
        );
    }
}

#[test]
fn every_sheepdog_page_a_page_names_is_shipped() {
    let manifest = std::fs::read_to_string(repo_path("Cargo.toml")).unwrap();
    for name in PAGES {
        assert!(
            manifest.contains(&format!("\"target/man/{name}.gz\"")),
            "{name} is not in the package's assets"
        );
        for line in page(name).lines().filter(|l| l.starts_with(".BR sheepdog")) {
            // ".BR sheepdog.toml (5)," names sheepdog.toml.5.
            let mut words = line.split_whitespace().skip(1);
            let (page, section) = (words.next().unwrap(), words.next().unwrap_or(""));
            let Some(section) = section.strip_prefix('(').and_then(|s| s.split(')').next()) else {
                continue; // not a reference to a page
            };
            let named = format!("{page}.{section}");
            assert!(
                PAGES.contains(&named.as_str()),
                "{name} refers to {named}, which is not shipped"
            );
        }
    }
    let unknown = Command::new(BIN).args(["man", "sheepdog-run.1"]).output().unwrap();
    assert!(!unknown.status.success());
}

#[test]
fn the_pages_document_every_command_exit_code_and_signal() {
    let page = page("sheepdog.1");
    for command in ["run", "check", "status", "reload", "scale"] {
        assert!(page.contains(&format!(".B {command}\n")), "command {command}");
    }
    for code in ["0", "1", "2", "71", "75", "78"] {
        assert!(page.contains(&format!(".TP\n.B {code}\n")), "exit code {code}");
    }
    for signal in ["SIGTERM", "SIGHUP", "SIGTTIN"] {
        assert!(page.contains(signal), "{signal}");
    }
    for section in [
        "SYNOPSIS",
        "OPTIONS",
        "EXIT STATUS",
        "SIGNALS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ] {
        assert!(page.contains(&format!(".SH {section}\n")), "{section}");
    }
}

/// `sheepdog completions SHELL` as the package installs it, loaded by the
/// real shell: bash and fish complete a subcommand and a flag; zsh loads it.
#[test]
fn shell_completions_complete_subcommands_and_flags_in_bash_zsh_and_fish() {
    let script = |shell: &str| {
        let output = sheepdog_client(&["completions", shell], std::time::Duration::from_secs(10));
        assert!(output.status.success(), "{shell}");
        let path = std::env::temp_dir().join(format!("sheepdog-completion-{}.{shell}", std::process::id()));
        std::fs::write(&path, &output.stdout).unwrap();
        path
    };
    let run = |program: &str, code: String| {
        let output = std::process::Command::new(program)
            .arg("-c")
            .arg(code)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let bash = script("bash");
    let said = run(
        "bash",
        format!(
            "source {}; COMP_WORDS=(sheepdog sc); COMP_CWORD=1; _sheepdog sheepdog sc sheepdog; echo ${{COMPREPLY[@]}}",
            bash.display()
        ),
    );
    assert_eq!(said.trim(), "scale");
    let fish = script("fish");
    let said = run(
        "fish",
        format!("source {}; complete -C 'sheepdog run --sto'", fish.display()),
    );
    assert!(said.starts_with("--stop-signal\t"), "{said}");
    let said = run("fish", format!("source {}; complete -C 'sheepdog sc'", fish.display()));
    assert!(said.starts_with("scale\t"), "{said}");
    let zsh = script("zsh");
    let said = run(
        "zsh",
        format!(
            "autoload -U compinit; compinit -u; source {}; echo $+functions[_sheepdog]",
            zsh.display()
        ),
    );
    assert_eq!(said.trim(), "1");
    for path in [bash, fish, zsh] {
        let _ = std::fs::remove_file(path);
    }
}

/// A pm2 user's first words get sheepdog's, not clap's bare "unrecognized".
#[test]
fn pm2_words_say_what_sheepdog_does_instead() {
    for (word, says) in [
        ("start", "sheepdog run --workers 2 -- node app.js"),
        ("stop", "systemctl stop sheepdog@app"),
        ("startup", "sudo sheepdog install app -- node app.js"),
        ("monit", "sheepdog top"),
        ("list", "sheepdog status"),
    ] {
        let output = sheepdog_client(&[word, "app.js"], std::time::Duration::from_secs(10));
        assert_eq!(output.status.code(), Some(2), "{word}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("sheepdog has no `{word}` (pm2's):")) && stderr.contains(says),
            "{stderr}"
        );
    }
}
