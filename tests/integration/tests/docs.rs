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
    ("--test", "cargo"),
    ("--check", "cargo fmt"),
    ("--build", "docker compose"),
    ("--env-file", "docker compose"),
    ("--now", "systemctl"),
    ("--random-fully", "iptables"),
    ("--udp-recvmmsg", "coturn turnserver"),
    ("--multiplex-peer", "coturn turnserver"),
    ("--udp-gso", "coturn turnserver"),
    ("--udp-sendmmsg-log", "coturn turnserver"),
];

/// The `--help` text of every binary and subcommand.
fn all_help() -> String {
    let runs: &[(&str, &[&str])] = &[
        ("turnkey", &["--help"]),
        ("turn-server", &["--help"]),
        ("turn-server", &["credentials", "--help"]),
        ("turn-server", &["admin", "--help"]),
        ("turn-server", &["admin", "end", "--help"]),
        ("turn-server", &["admin", "bandwidth", "--help"]),
        ("turn-server", &["admin", "drain", "--help"]),
        ("turn-server", &["import-coturn", "--help"]),
        ("stun-server", &["--help"]),
        ("signaling", &["--help"]),
        ("signaling", &["token", "--help"]),
        ("sfu", &["--help"]),
        ("turn-bench", &["--help"]),
        ("turn-bench", &["soak", "--help"]),
        ("turn-bench", &["amplification", "--help"]),
        ("turn-bench", &["idle", "--help"]),
        ("turn-bench", &["floor", "--help"]),
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
        std::fs::read_to_string(std::path::Path::new(common::ROOT).join("README.md")).unwrap();
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

/// The configuration tables of README.md under `### {section}`: each key of the first column
/// (the backticked snake_case names before any `/`) with its default cell, backticks removed
/// and a parenthesised note for turnkey cut off. A row naming two keys (`min_port`,
/// `max_port` | 49152, 65535) gives each its part.
fn readme_defaults(readme: &str, section: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let Some(start) = readme.find(&format!("### {section}\n")) else {
        panic!("README.md has no section {section}");
    };
    let body = &readme[start + section.len() + 5..];
    let end = body.find("\n## ").unwrap_or(body.len());
    let body = &body[..body[..end].find("\n### ").unwrap_or(end)];
    for line in body.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (keys_cell, default) = (cells[1], cells[2]);
        let keys_part = keys_cell.split(" / ").next().unwrap_or("");
        let keys: Vec<String> = keys_part
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|k| !k.starts_with('-') && !k.contains(' '))
            .map(str::to_string)
            .collect();
        let default = default.split(" (").next().unwrap_or("").replace('`', "");
        let parts: Vec<&str> = default.split(", ").collect();
        for (i, k) in keys.iter().enumerate() {
            let d = if keys.len() > 1 && parts.len() == keys.len() {
                parts[i]
            } else {
                default.as_str()
            };
            out.insert(k.clone(), d.trim().to_string());
        }
    }
    out
}

/// Every default README.md's configuration tables give agrees with the value the code resolves
/// when nothing is configured; and every plain numeric or address default in those tables is
/// checked here (a new row without a check fails this test).
#[test]
fn readme_defaults_match_the_code() {
    use turnkey_runtime::config::Layered;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let version = env!("CARGO_PKG_VERSION");
    let turn = turn_server::config::ServerArgs::default()
        .resolve(&turn_server::config::Defaults::default())
        .expect("turn-server defaults");
    // The XDP keys resolve only with an interface named.
    let turn_xdp = turn_server::config::ServerArgs {
        xdp: vec!["eth0".into()],
        ..Default::default()
    }
    .resolve(&turn_server::config::Defaults::default())
    .expect("turn-server defaults with --xdp")
    .xdp
    .expect("xdp on");
    let stun = stun_server::config::Cli::default()
        .resolve(&stun_server::config::Defaults::default())
        .expect("stun-server defaults");
    let sig = signaling::config::SignalingArgs::default()
        .resolve(&signaling::config::Defaults::default())
        .expect("signaling defaults");
    let sfu = sfu::config::SfuArgs::default()
        .resolve(&sfu::config::Defaults::default())
        .expect("sfu defaults");
    let s = |v: &dyn std::fmt::Display| v.to_string();
    let l = &turn.limits;
    let checks: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "turn-server (and turnkey)",
            vec![
                ("listen", s(&turn.listen[0])),
                ("min_port", s(&turn.min_port)),
                ("max_port", s(&turn.max_port)),
                ("realm", turn.realm.clone()),
                ("metrics", s(&turn.metrics)),
                ("nonce_lifetime", s(&turn.nonce_lifetime_secs)),
                ("user_quota", s(&turn.user_quota)),
                ("total_quota", s(&turn.total_quota)),
                ("ip_quota", s(&turn.ip_quota)),
                ("unauth_rate", s(&turn.unauth_rate_per_sec)),
                ("unauth_burst", s(&turn.unauth_burst)),
                ("xdp_max_bindings", s(&turn_xdp.max_bindings)),
                ("relay_multiplex", s(&turn.relay_multiplex)),
                ("xdp_mode", format!("{:?}", turn_xdp.mode).to_lowercase()),
                ("max_lifetime", s(&turn.max_lifetime_secs)),
                ("drain_timeout_secs", s(&turn.drain_timeout_secs)),
                ("capacity_relay_bps", s(&turn.capacity_relay_bps)),
                (
                    "capacity_allocations",
                    if turn.capacity_allocations == u64::from(turn.total_quota) {
                        "total_quota".to_string()
                    } else {
                        s(&turn.capacity_allocations)
                    },
                ),
                (
                    "software",
                    turn.software
                        .clone()
                        .unwrap_or_default()
                        .replace(version, "<version>"),
                ),
                ("log_json", s(&turn.log_json)),
                (
                    "alternate_over_allocations",
                    s(&turn.alternate_over_allocations),
                ),
                ("mobility", s(&turn.mobility)),
                ("dtls_max_handshakes", s(&l.dtls_max_handshakes)),
                (
                    "dtls_max_handshakes_per_ip",
                    s(&l.dtls_max_handshakes_per_ip),
                ),
                ("tcp_max_connections", s(&l.tcp_max_connections)),
                (
                    "tcp_max_connections_per_ip",
                    s(&l.tcp_max_connections_per_ip),
                ),
                ("tls_max_handshakes", s(&l.tls_max_handshakes)),
                ("tls_max_handshakes_per_ip", s(&l.tls_max_handshakes_per_ip)),
                ("tcp_send_queue_bytes", s(&l.tcp_send_queue_bytes)),
                ("bandwidth_burst_ms", s(&turn.bandwidth.burst_ms)),
                (
                    "bandwidth_allocation_bps",
                    s(&turn.bandwidth.allocation_bps),
                ),
                ("bandwidth_user_bps", s(&turn.bandwidth.user_bps)),
                ("bandwidth_total_bps", s(&turn.bandwidth.total_bps)),
                (
                    "peer_tcp_max_connections_per_allocation",
                    s(&l.peer_tcp_max_connections_per_allocation),
                ),
                ("peer_tcp_max_connections", s(&l.peer_tcp_max_connections)),
            ],
        ),
        (
            "stun-server",
            vec![
                ("listen", s(&stun.listen[0])),
                ("metrics", s(&stun.metrics)),
                (
                    "software",
                    stun.software
                        .clone()
                        .unwrap_or_default()
                        .replace(version, "<version>"),
                ),
                ("log_json", s(&stun.log_json)),
                ("drain_timeout_secs", s(&stun.drain_timeout_secs)),
            ],
        ),
        (
            "signaling",
            vec![
                ("listen", s(&sig.listen)),
                ("metrics", s(&sig.metrics)),
                ("turn_ttl", s(&sig.turn_ttl_secs)),
                (
                    "turn_credential_grace_secs",
                    s(&sig.turn_credential_grace_secs),
                ),
                ("role", format!("{:?}", sig.role).to_lowercase()),
                ("resume_grace", s(&sig.resume_grace_secs)),
                ("room_idle_secs", s(&sig.room_idle_secs)),
                ("max_message_bytes", s(&sig.max_message_bytes)),
                ("idle_timeout", s(&sig.idle_timeout_secs)),
                ("rate_limit", s(&sig.rate_per_sec)),
                ("rate_burst", s(&sig.rate_burst)),
                ("token_ttl", s(&sig.token_ttl_secs)),
                ("default_capacity", s(&sig.default_capacity)),
                ("max_capacity", s(&sig.max_capacity)),
                (
                    "default_sfu_capacity",
                    if sig.default_sfu_capacity == sig.max_capacity {
                        "max_capacity".to_string()
                    } else {
                        s(&sig.default_sfu_capacity)
                    },
                ),
                ("drain_timeout_secs", s(&sig.drain_timeout_secs)),
                ("capacity_connections", s(&sig.capacity_connections)),
                ("log_json", s(&sig.log_json)),
            ],
        ),
        (
            "sfu",
            vec![
                ("media_listen", s(&sfu.media_listen)),
                ("no_ice_tcp", s(&!sfu.ice_tcp)),
                ("link_listen", s(&sfu.link_listen)),
                ("metrics", s(&sfu.metrics)),
                ("max_participants", s(&sfu.max_participants)),
                ("max_tracks_per_room", s(&sfu.max_tracks_per_room)),
                (
                    "max_tracks_per_participant",
                    s(&sfu.max_tracks_per_participant),
                ),
                ("max_publish_bitrate", s(&sfu.max_publish_bitrate)),
                ("ice_timeout", s(&sfu.ice_timeout_secs)),
                (
                    "ice_tcp_handshake_timeout_secs",
                    s(&sfu.ice_tcp_handshake_timeout_secs),
                ),
                (
                    "ice_tcp_max_pending_per_ip",
                    s(&sfu.ice_tcp_max_pending_per_ip),
                ),
                ("ice_tcp_max_pending", s(&sfu.ice_tcp_max_pending)),
                ("data_message_max_bytes", s(&sfu.data_message_max_bytes)),
                ("data_messages_per_sec", s(&sfu.data_messages_per_sec)),
                ("data_message_burst", s(&sfu.data_message_burst)),
                ("direct_send", s(&sfu.direct_send)),
                ("direct_receive", s(&sfu.direct_receive)),
                ("drain_timeout_secs", s(&sfu.drain_timeout_secs)),
                ("capacity_bps", s(&sfu.capacity_bps)),
                ("log_json", s(&sfu.log_json)),
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (section, values) in &checks {
        // The binary's --help says the same (`Default X` or `[default: X]`), where it says one.
        let bin = section.split_whitespace().next().unwrap_or(section);
        let help = help_defaults(bin);
        for (key, actual) in values {
            let flag = format!("--{}", key.replace('_', "-"));
            if let Some(said) = help.get(&flag) {
                let said = said.replace(version, "<version>");
                if &said != actual {
                    wrong.push(format!(
                        "{bin} --help: {flag}: says {said:?}, code {actual:?}"
                    ));
                }
            }
        }
        let table = readme_defaults(&readme, section);
        for (key, actual) in values {
            match table.get(*key) {
                Some(doc) if doc == actual => {}
                Some(doc) => {
                    wrong.push(format!("{section}: {key}: README {doc:?}, code {actual:?}"))
                }
                None => wrong.push(format!("{section}: {key}: no README row")),
            }
        }
        // A plain number or address in the table that nothing above checks.
        for (key, doc) in &table {
            let plain = !doc.is_empty()
                && doc
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == ':');
            if plain && !values.iter().any(|(k, _)| k == key) {
                wrong.push(format!(
                    "{section}: {key} = {doc} is not checked by this test"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "README defaults that disagree:\n{}",
        wrong.join("\n")
    );
}

/// `bin --help`: each `--flag` with the default its text states (`Default X` or
/// `[default: X]`), when that is one plain word (a number, address or name).
fn help_defaults(bin: &str) -> std::collections::HashMap<String, String> {
    let out = common::run_with_timeout(
        Command::new(common::bin_path(bin)).arg("--help"),
        std::time::Duration::from_secs(20),
    );
    assert!(out.success(), "{bin} --help: {}", out.combined());
    let mut map = std::collections::HashMap::new();
    let mut flag: Option<String> = None;
    let mut text = String::new();
    let mut flush = |flag: &Option<String>, text: &str| {
        let Some(f) = flag else { return };
        let said = text
            .split("[default: ")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .or_else(|| {
                text.rsplit("Default ")
                    .next()
                    .filter(|_| text.contains("Default "))
            });
        if let Some(v) = said.map(|v| v.trim().trim_end_matches(['.', ';'])) {
            let v = v.trim_matches('"');
            if !v.is_empty() && !v.contains(' ') && !v.contains('<') {
                map.insert(f.clone(), v.to_string());
            }
        }
    };
    for line in out.stdout.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || (t.starts_with('-') && t.contains(", --")) {
            flush(&flag, &text);
            flag = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string());
            text = t.to_string();
        } else {
            text.push(' ');
            text.push_str(t);
        }
    }
    flush(&flag, &text);
    map
}
