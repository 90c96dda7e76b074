//! The docs match the binaries: every `--flag` and every `TURNKEY_*` environment variable that
//! README.md names exists in the `--help` of one of our binaries (or of a subcommand), except
//! the flags of other programs the README shows (cargo, Docker, systemd, iptables), listed
//! below with their program. Each binary's `--help` names only the `TURNKEY_*` variables of
//! one naming scheme (plural names for lists, one name per setting).

mod common;

use std::process::Command;

/// Flags README.md shows for programs that are not ours.
const OTHER_PROGRAMS: &[(&str, &str)] = &[
    ("--release", "cargo"),
    ("--workspace", "cargo"),
    ("--bins", "cargo"),
    ("--check", "cargo fmt"),
    ("--build", "docker compose"),
    ("--env-file", "docker compose"),
    ("--now", "systemctl"),
    ("--random-fully", "iptables"),
];

/// The `--help` text of every binary and subcommand.
fn all_help() -> String {
    let runs: &[(&str, &[&str])] = &[
        ("turnkey", &["--help"]),
        ("turn-server", &["--help"]),
        ("turn-server", &["credentials", "--help"]),
        ("stun-server", &["--help"]),
        ("signaling", &["--help"]),
        ("signaling", &["token", "--help"]),
        ("sfu", &["--help"]),
        ("turn-bench", &["--help"]),
        ("turn-bench", &["soak", "--help"]),
        ("turn-bench", &["amplification", "--help"]),
        ("signaling-bench", &["--help"]),
        ("sfu-bench", &["--help"]),
    ];
    let mut text = String::new();
    for (bin, args) in runs {
        let out = Command::new(common::bin_path(bin))
            .args(*args)
            .env_remove("TURNKEY_API_KEYS")
            .output()
            .unwrap_or_else(|e| panic!("{bin} {args:?}: {e}"));
        assert!(out.status.success(), "{bin} {args:?} failed");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push('\n');
    }
    text
}

/// The distinct words of `text` that start with `prefix` and continue with `ok` characters.
fn words<'a>(text: &'a str, prefix: &str, ok: fn(char) -> bool) -> Vec<&'a str> {
    let mut found: Vec<&str> = text
        .match_indices(prefix)
        .filter(|(i, _)| {
            // Not the middle of a longer word (`x--y`).
            text[..*i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
        })
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let n = rest.find(|c: char| !ok(c)).unwrap_or(rest.len());
            &text[i..i + prefix.len() + n]
        })
        .filter(|w| w.len() > prefix.len())
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[test]
fn every_flag_and_variable_in_the_readme_exists() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let help = all_help();
    let flag_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let env_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let help_flags = words(&help, "--", flag_char);
    let mut missing = Vec::new();
    for flag in words(&readme, "--", flag_char) {
        if flag.ends_with('-') || OTHER_PROGRAMS.iter().any(|(f, _)| *f == flag) {
            continue;
        }
        if !help_flags.contains(&flag) {
            missing.push(flag.to_string());
        }
    }
    let help_vars = words(&help, "TURNKEY_", env_char);
    for var in words(&readme, "TURNKEY_", env_char) {
        // Docker Compose's own settings (`.env`), not read by our binaries.
        if var == "TURNKEY_IMAGE" {
            continue;
        }
        if !help_vars.contains(&var) {
            missing.push(var.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "README.md names what no --help knows: {missing:?}"
    );
    // One name per setting: no variable is also spelled with a trailing S (or without it).
    for var in &help_vars {
        let other = match var.strip_suffix('S') {
            Some(base) => base.to_string(),
            None => format!("{var}S"),
        };
        assert!(
            !help_vars.contains(&other.as_str()),
            "both {var} and {other} are read"
        );
    }
}
