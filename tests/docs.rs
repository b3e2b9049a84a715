//! The documentation a user reads is kept true: every link between the
//! README, docs/ and the rest of the repository leads somewhere, and the
//! tables made from the code (the signals here; the config keys and the
//! metrics in their modules' tests) are the code's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut in_code = false;
    let mut found = HashSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            found.insert(slug(line.trim_start_matches('#')));
        }
    }
    found
}

/// `[text](target)` links outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_link_of_the_readme_and_the_docs_leads_somewhere() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            assert!(file.exists(), "{}: {target} leads to no file", page.display());
            if !anchor.is_empty() {
                assert!(
                    anchors(&file).contains(anchor),
                    "{}: {target} names no heading of {}",
                    page.display(),
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} links: the scan is broken");
}

#[test]
fn the_signal_table_of_the_docs_is_the_one_the_loop_acts_on() {
    let text = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("| signal | effect |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(rows, sheepdog::shell::signals::markdown_rows());
}

#[test]
fn the_readme_is_what_a_newcomer_reads_first() {
    // What it is, the two commands, deploying with systemd, the worker
    // contract, and the way to the rest: short enough to read through.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for heading in [
        "## Two commands",
        "## Deploying with systemd",
        "## The worker contract",
        "## Documentation",
    ] {
        assert!(readme.contains(heading), "no {heading:?}");
    }
    let lines = readme.lines().count();
    assert!(lines < 400, "the README is {lines} lines long");
    for page in pages().iter().skip(1) {
        let name = page.strip_prefix(repo()).unwrap().display().to_string();
        assert!(
            readme.contains(&format!("]({name})")),
            "the README does not lead to {name}"
        );
    }
}
