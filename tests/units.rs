//! The unit files in systemd/ pass systemd's own checks (`systemd-analyze
//! verify`, Debian's systemd): no unknown key, no bad value, commands that
//! exist. The notify-reload variant needs systemd >= 253 and is checked only
//! where the installed systemd knows Type=notify-reload.

mod common;

use std::process::Command;

use common::*;

/// Copies the units into a temporary directory with ExecStart= pointing at
/// the built binary, instantiating the templates as NAME@demo.
fn staged_units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_path("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/bin/sheepdog", BIN);
        let staged = name.replace("@.", "@demo.");
        std::fs::write(dir.path().join(staged), text).unwrap();
    }
    dir
}

fn verify(dir: &std::path::Path, units: &[&str]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|u| dir.join(u)))
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn systemd_version() -> u32 {
    let output = Command::new("systemd-analyze").arg("--version").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify_without_a_warning() {
    let dir = staged_units();
    let (ok, text) = verify(
        dir.path(),
        &[
            "myapp.socket",
            "myapp.service",
            "sheepdog@demo.socket",
            "sheepdog@demo.service",
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "", "systemd-analyze had something to say");
}

#[test]
fn the_notify_reload_variant_passes_where_systemd_knows_it() {
    let dir = staged_units();
    let (ok, text) = verify(dir.path(), &["myapp-notify-reload.service"]);
    if systemd_version() >= 253 {
        assert!(ok && text.trim().is_empty(), "{text}");
    } else {
        // systemd 252 (Debian 12) does not know the type: the unit says so.
        assert!(text.contains("notify-reload"), "{text}");
        let unit = std::fs::read_to_string(repo_path("systemd/myapp-notify-reload.service")).unwrap();
        assert!(unit.contains("systemd >= 253"));
    }
}

#[test]
fn the_units_run_sheepdog_with_the_commands_it_has() {
    // ExecStart=/ExecReload= use subcommands and flags the binary accepts.
    for args in [["run", "--help"], ["reload", "--help"]] {
        let output = Command::new(BIN).args(args).output().unwrap();
        assert!(output.status.success());
        assert!(String::from_utf8_lossy(&output.stdout).contains("--config <FILE>"));
    }
    let service = std::fs::read_to_string(repo_path("systemd/sheepdog@.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/bin/sheepdog run --config /etc/sheepdog/%i.toml"));
    assert!(service.contains("ExecReload=/usr/bin/sheepdog reload --config /etc/sheepdog/%i.toml"));
}

#[test]
fn every_shipped_service_unit_scores_2_or_better_on_systemd_analyze_security() {
    let dir = staged_units();
    let services: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".service"))
        .collect();
    assert_eq!(services.len(), 3, "{services:?}");
    for service in services {
        let output = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.path().join(&service))
            .output()
            .expect("systemd-analyze (Debian's systemd package)");
        let text = String::from_utf8_lossy(&output.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")?
                    .1
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{service}: no score in {text}"));
        assert!(score <= 2.0, "{service} scores {score}, above 2.0:\n{text}");
    }
}

#[test]
fn no_shipped_service_unit_stops_when_the_oom_killer_takes_one_worker() {
    // systemd's default OOMPolicy=stop would stop the whole service for one
    // worker the kernel's OOM killer took; sheepdog replaces it instead.
    for entry in std::fs::read_dir(repo_path("systemd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            let unit = std::fs::read_to_string(&path).unwrap();
            assert!(
                unit.lines().any(|l| l.trim() == "OOMPolicy=continue"),
                "{} does not say OOMPolicy=continue",
                path.display()
            );
        }
    }
}
