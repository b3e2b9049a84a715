//! The manual pages, `sheepdog(1)` and `sheepdog.toml(5)`: hand-written
//! roff, with the keys of the config filled in from [`schema::KEYS`] and
//! the signals from [`signals::TABLE`], so that the pages and the tables of
//! `docs/` cannot drift apart.

use crate::config::schema::KEYS;
use crate::shell::signals;

/// The pages sheepdog ships, by file name.
pub const PAGES: [&str; 2] = ["sheepdog.1", "sheepdog.toml.5"];

/// The roff text of `page` (one of [`PAGES`]).
pub fn page(page: &str) -> Option<String> {
    let template = match page {
        "sheepdog.1" => include_str!("../packaging/man/sheepdog.1.in"),
        "sheepdog.toml.5" => include_str!("../packaging/man/sheepdog.toml.5.in"),
        _ => return None,
    };
    Some(
        template
            .replace("@VERSION@", crate::build::version())
            .replace("@DATE@", RELEASE_DATE)
            .replace("@KEYS@", &keys())
            .replace("@SIGNALS@", &signal_table()),
    )
}

/// The date on the pages: this release's.
const RELEASE_DATE: &str = "2026-11-25";

/// The keys of the config, a tagged paragraph each.
fn keys() -> String {
    let mut out = String::new();
    let mut section = "";
    for key in KEYS {
        let (this_section, name) = match key.key.split_once('.') {
            Some((section, name)) => (section, name),
            None => ("", key.key),
        };
        if this_section != section {
            section = this_section;
            out += &format!(".SS [{section}]\n");
        }
        let name = if name == "env" { "[env]" } else { name };
        let default = match key.default {
            "—" => "none".to_string(),
            default => inline(default),
        };
        out += &format!(
            ".TP\n.B {}\n{}\n.br\n{}\n",
            roff(name),
            wrap(&sentence(&inline(key.meaning))),
            wrap(&format!("Default: {default}."))
        );
    }
    out
}

/// The signal table, a tagged paragraph per row.
fn signal_table() -> String {
    let mut out = String::new();
    for row in signals::TABLE {
        let mut names: Vec<String> = row.signals.iter().map(|n| roff(n)).collect();
        if row.real_time {
            names.push("real\\-time signals".into());
        }
        out += &format!(
            ".TP\n.B {}\n{}\n",
            names.join(", "),
            wrap(&sentence(&inline(row.effect)))
        );
    }
    out
}

/// Breaks text into input lines of at most 78 bytes, at spaces, as man
/// pages are written; a line never starts with a control character.
fn wrap(text: &str) -> String {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > 78 {
            lines.push(String::new());
        }
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines
        .into_iter()
        .map(|l| {
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first letter up, a full stop at the end.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.next().map(|c| c.to_uppercase().collect()).unwrap_or_default();
    out.extend(chars);
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// Markdown inline text to roff: code in bold, links as their text, the
/// few non-ASCII signs as roff escapes.
fn inline(markdown: &str) -> String {
    let mut out = String::new();
    let mut rest = markdown;
    while !rest.is_empty() {
        if let Some(code) = rest.strip_prefix('`')
            && let Some((code, after)) = code.split_once('`')
        {
            out += &format!("\\fB{}\\fR", roff(code));
            rest = after;
        } else if let Some(link) = rest.strip_prefix('[')
            && let Some((text, after)) = link.split_once("](")
            && let Some((_, after)) = after.split_once(')')
        {
            out += &format!("{} in the documentation", roff(text));
            rest = after;
        } else {
            let first = rest.chars().next().map_or(1, char::len_utf8);
            let next = rest[first..].find(['`', '[']).map_or(rest.len(), |i| i + first);
            out += &roff(&rest[..next]);
            rest = &rest[next..];
        }
    }
    out
}

/// Plain text as roff: backslashes and hyphens escaped, signs named.
fn roff(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('—', "\\(em")
        .replace('–', "\\(en")
        .replace('×', "\\(mu")
        .replace('≥', "\\(>=")
        .replace('"', "\\(dq")
        .replace('\'', "\\(aq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_on_the_page_and_nothing_is_left_to_fill() {
        let page = page("sheepdog.toml.5").unwrap();
        for key in KEYS {
            let name = key.key.rsplit('.').next().unwrap();
            let name = if name == "env" { "[env]" } else { name };
            assert!(page.contains(&format!(".B {}\n", roff(name))), "{} is missing", key.key);
        }
        for name in PAGES {
            for placeholder in ["@VERSION@", "@DATE@", "@KEYS@", "@SIGNALS@"] {
                assert!(!page_text(name).contains(placeholder), "{name} has {placeholder} left");
            }
        }
        assert!(page.contains(".SS [heartbeat]\n") && page.contains(".SS [memory]\n"));
        assert_eq!(super::page("sheepdog.8"), None);
    }

    fn page_text(name: &str) -> String {
        page(name).unwrap()
    }

    #[test]
    fn markdown_becomes_roff() {
        assert_eq!(
            inline("`\"5s\"` (see [Memory](#memory)) — 3 × `interval`"),
            "\\fB\\(dq5s\\(dq\\fR (see Memory in the documentation) \\(em 3 \\(mu \\fBinterval\\fR"
        );
        assert_eq!(inline("node-ipc"), "node\\-ipc");
        assert_eq!(sentence("how often"), "How often.");
        let long = "word ".repeat(40);
        let wrapped = wrap(long.trim());
        assert!(wrapped.lines().all(|l| l.len() <= 78), "{wrapped}");
        assert_eq!(wrapped.split_whitespace().count(), 40);
        assert_eq!(wrap(".toml files"), "\\&.toml files");
    }
}
