//! `turn-server import-coturn FILE` against coturn's own documentation and a real client:
//!
//! - Debian's example `turnserver.conf` (package `coturn`, which the test command installs)
//!   imports with exit status 0 and the TOML loads as turn-server's configuration;
//! - the same file with every commented-out option line turned on: each option occurrence is
//!   accounted for exactly once in the output's record (mapped, already the default, or
//!   unmapped with why), none is an "unknown coturn option", and the TOML still loads;
//! - a small hand-written coturn config: the resolved configuration is checked field by field,
//!   then a server started from the imported TOML relays `turnutils_uclient`'s traffic for the
//!   imported static user and for the imported REST secret;
//! - an unreadable file and an invalid line give exit status 2 and a message naming them.
//!
//! The record the output carries, one comment line per option occurrence:
//! `# mapped: line N: OPTION: KEYS`, `# default: line N: OPTION: WHY`,
//! `# unmapped: line N: OPTION: WHY`.

mod common;

use common::{
    bin_path, free_udp_tcp_port, require_tool, run_with_timeout, ServerGuard, ToolOutput,
    TOOL_TIMEOUT,
};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use turn_server::config::{Defaults, Layered, ServerArgs, TurnConfig};

/// coturn's documented example configuration, from Debian's `coturn` package.
const EXAMPLE: &str = "/usr/share/doc/coturn/examples/etc/turnserver.conf";

fn example() -> String {
    std::fs::read_to_string(EXAMPLE).unwrap_or_else(|e| {
        panic!(
            "{EXAMPLE}: {e}: install Debian's coturn (apt-get install coturn; `bash scripts/test.sh` does)"
        )
    })
}

/// A fresh file in the temporary directory holding `text`.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = common::temp_log_path(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn import(path: &Path) -> ToolOutput {
    run_with_timeout(
        Command::new(bin_path("turn-server"))
            .arg("import-coturn")
            .arg(path),
        TOOL_TIMEOUT,
    )
}

/// Imports `path`, requiring exit status 0; returns the TOML.
fn import_ok(path: &Path) -> String {
    let out = import(path);
    assert!(
        out.success(),
        "import-coturn {} failed ({:?}):\n{}",
        path.display(),
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("unmapped"),
        "no summary on stderr: {}",
        out.stderr
    );
    out.stdout
}

/// Loads `toml` the way `turn-server --config FILE` does.
fn resolve(toml: &str) -> TurnConfig {
    let path = temp_file("imported.toml", toml);
    let args = ServerArgs {
        config: Some(path.clone()),
        ..ServerArgs::default()
    };
    let cfg = args
        .resolve(&Defaults::default())
        .unwrap_or_else(|e| panic!("the imported TOML does not load: {e}\n{toml}"));
    let _ = std::fs::remove_file(path);
    cfg
}

/// One record line of the output: (kind, line, option, detail).
type Record = (String, usize, String, String);

fn records(toml: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for l in toml.lines() {
        for kind in ["mapped", "default", "unmapped"] {
            let Some(rest) = l.strip_prefix(&format!("# {kind}: line ")) else {
                continue;
            };
            let (n, rest) = rest.split_once(": ").expect("line number");
            let (option, detail) = rest.split_once(": ").expect("option name");
            out.push((
                kind.to_string(),
                n.parse().expect("a line number"),
                option.to_string(),
                detail.to_string(),
            ));
        }
    }
    out
}

/// The option lines of a coturn config, read independently of the importer: (line, name).
fn option_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim_start();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let end = l.find([' ', '\t', '=']).unwrap_or(l.len());
            Some((i + 1, l[..end].to_string()))
        })
        .collect()
}

/// Turns on every commented-out option of coturn's example: `#option`, `#option=value`,
/// `# option=value` and `#option-name value` lines. Prose lines (`# Listener interface ...`,
/// `#Local system IP ...`, `# Per-user allocation quota.`) stay comments: an option name is
/// a word right after `#` (or `# ` when `=` follows), and a value after a space is taken only
/// for hyphenated names right after `#`.
fn uncomment_all(text: &str) -> (String, usize) {
    let is_name = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let mut n = 0;
    let mut out = String::new();
    for line in text.lines() {
        let turned_on = line.strip_prefix('#').and_then(|rest| {
            // `#option...` (tight) or `# option=...`.
            let tight = !rest.starts_with(' ');
            let body = rest.strip_prefix(' ').unwrap_or(rest);
            let name = match body.split_once('=') {
                Some((name, _)) => name,
                None if !tight => return None,
                None => match body.split_once([' ', '\t']) {
                    Some((name, value)) if name.contains('-') && !value.trim().is_empty() => name,
                    Some(_) => return None,
                    None => body,
                },
            };
            is_name(name).then_some(body)
        });
        match turned_on {
            Some(body) => {
                n += 1;
                out.push_str(body);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    (out, n)
}

/// Every option line of `config` has exactly one record with its line number and name, and
/// every record is such a line; returns the records by kind.
fn check_every_option_accounted(config: &str, toml: &str) -> BTreeMap<String, Vec<Record>> {
    let lines = option_lines(config);
    let recs = records(toml);
    let mut by_line: HashMap<usize, Vec<&Record>> = HashMap::new();
    for r in &recs {
        by_line.entry(r.1).or_default().push(r);
    }
    for (line, name) in &lines {
        let found = by_line.get(line).map(Vec::as_slice).unwrap_or_default();
        assert!(
            found.len() == 1 && found[0].2 == *name,
            "line {line} ({name}) has records {found:?}\n{toml}"
        );
    }
    assert_eq!(
        recs.len(),
        lines.len(),
        "records for non-option lines:\n{toml}"
    );
    let mut by_kind: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in recs {
        by_kind.entry(r.0.clone()).or_default().push(r);
    }
    by_kind
}

fn options_of(by_kind: &BTreeMap<String, Vec<Record>>, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = by_kind
        .get(kind)
        .map(|rs| rs.iter().map(|r| r.2.clone()).collect())
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

#[test]
fn coturns_example_config_imports_and_loads() {
    let text = example();
    let toml = import_ok(Path::new(EXAMPLE));
    let by_kind = check_every_option_accounted(&text, &toml);
    // The example turns on four options: the logging one has no counterpart, the RFC 5780
    // ones are turn-server's behaviour already, MAPPED-ADDRESS cannot be turned off.
    assert_eq!(
        options_of(&by_kind, "default"),
        ["no-rfc5780", "response-origin-only-with-rfc5780"]
    );
    assert_eq!(
        options_of(&by_kind, "unmapped"),
        ["no-stun-backward-compatibility", "syslog"]
    );
    assert!(options_of(&by_kind, "mapped").is_empty());
    let cfg = resolve(&toml);
    assert_eq!(
        cfg.listen,
        vec!["0.0.0.0:3478".parse::<SocketAddr>().unwrap()]
    );
    assert!(cfg.tls_listen.is_empty() && cfg.users.is_empty() && cfg.auth_secrets.is_empty());
}

#[test]
fn every_documented_option_is_mapped_or_explained() {
    let (text, turned_on) = uncomment_all(&example());
    // The example documents 116 commented-out option lines (coturn 4.6.1); a much smaller
    // number means the uncommenting missed some.
    assert!(
        turned_on >= 100,
        "only {turned_on} lines turned on:\n{text}"
    );
    let path = temp_file("turnserver-all.conf", &text);
    let toml = import_ok(&path);
    let by_kind = check_every_option_accounted(&text, &toml);
    let unknown: Vec<&Record> = by_kind
        .get("unmapped")
        .into_iter()
        .flatten()
        .filter(|r| r.3.contains("unknown coturn option"))
        .collect();
    assert!(
        unknown.is_empty(),
        "documented options not known: {unknown:?}"
    );
    for r in by_kind.values().flatten() {
        assert!(!r.3.is_empty(), "no detail for {r:?}");
    }
    // A sample of what must come out, from the example's values.
    let cfg = resolve(&toml);
    assert_eq!(cfg.realm, "mycompany.org");
    assert_eq!(
        cfg.users.get("ninefingers").map(String::as_str),
        Some("youhavetoberealistic")
    );
    assert_eq!(cfg.auth_secrets, vec!["north".to_string()]);
    assert!(cfg
        .listen
        .contains(&"172.17.19.101:3478".parse::<SocketAddr>().unwrap()));
    assert!(cfg.listen.contains(
        &"[2607:f0d0:1002:51::4]:33478"
            .parse::<SocketAddr>()
            .unwrap()
    ));
    assert!(cfg.allow_peer.contains(&"83.166.68.45/32".parse().unwrap()));
    assert!(cfg.deny_peer.contains(&"83.166.64.0/22".parse().unwrap()));
    assert!(
        cfg.tls_listen.is_empty() && cfg.dtls_listen.is_empty(),
        "no-tls, no-dtls"
    );
    assert_eq!((cfg.min_port, cfg.max_port), (49152, 65535));
    assert_eq!(cfg.metrics, "0.0.0.0:9641".parse::<SocketAddr>().unwrap());
    assert_eq!(cfg.software, None);
    let unmapped = options_of(&by_kind, "unmapped");
    for o in [
        "tls-alternate-server",
        "psql-userdb",
        "cli-password",
        "web-admin",
        "no-udp",
        "no-auth",
        "user-quota",
    ] {
        assert!(
            unmapped.contains(&o.to_string()),
            "{o} not unmapped: {unmapped:?}"
        );
    }
    // The example's values that are turnkey's behaviour already (max-bps=0 is no limit).
    let default = options_of(&by_kind, "default");
    for o in [
        "max-bps",
        "bps-capacity",
        "lt-cred-mech",
        "no-multicast-peers",
        "channel-lifetime",
    ] {
        assert!(
            default.contains(&o.to_string()),
            "{o} not default: {default:?}"
        );
    }
    // The hashed turnadmin key is unmapped, by name, without the key.
    assert!(toml.contains("user \"ninefingers\" has a turnadmin key"));
    assert!(!toml.contains("0xbc807ee29df3c9ffa736523fb2c4e8ee"));
}

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "import-s3cr3t";

/// A hand-written coturn config for a server on 127.0.0.1:`port`.
fn hand_written(port: u16) -> String {
    format!(
        "# coturn, as an operator might have it\n\
         listening-ip=127.0.0.1\n\
         listening-port={port}\n\
         relay-ip=127.0.0.1\n\
         min-port=61000\n\
         max-port=65535\n\
         realm=import.example\n\
         lt-cred-mech\n\
         user={USER}:{PASSWORD}\n\
         use-auth-secret\n\
         static-auth-secret={SECRET}\n\
         user-quota=8\n\
         total-quota=500\n\
         max-allocate-lifetime=1200\n\
         stale-nonce=300\n\
         allow-loopback-peers\n\
         denied-peer-ip=10.0.0.0-10.0.0.255\n\
         allowed-peer-ip=10.0.0.7\n\
         no-multicast-peers\n\
         fingerprint\n\
         no-software-attribute\n\
         max-bps=1000000\n\
         cli-password=qwerty\n"
    )
}

/// The number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Runs uclient (one client, 20 messages through the echo peer, ChannelData over UDP) with
/// `auth` (`-w PASSWORD` or `-W SECRET`) and requires every message back.
fn relay_through(server_port: u16, peer_port: u16, auth: [&str; 2]) {
    let tool = require_tool("turnutils_uclient");
    let args: Vec<String> = [
        "-c", "-X", "-z", "5", "-m", "1", "-n", "20", "-l", "120", "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([server_port.to_string()])
    .chain(["-e", "127.0.0.1", "-r"].iter().map(|s| s.to_string()))
    .chain([peer_port.to_string(), "-u".into(), USER.into()])
    .chain(auth.iter().map(|s| s.to_string()))
    .chain(["127.0.0.1".to_string()])
    .collect();
    let out = run_with_timeout(Command::new(tool).args(&args), TOOL_TIMEOUT);
    let shown = format!(
        "turnutils_uclient {}\nexit {:?}\n{}",
        args.join(" "),
        out.status,
        out.combined()
    );
    assert!(out.success(), "uclient failed: {shown}");
    let totals = out
        .stdout
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("no final report: {shown}"));
    assert_eq!(number_after(totals, "tot_send_msgs="), Some(20), "{shown}");
    assert_eq!(number_after(totals, "tot_recv_msgs="), Some(20), "{shown}");
}

/// Each item's text, for comparing address lists with literals.
fn shown<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

#[test]
fn a_hand_written_config_imports_exactly_and_serves_uclient() {
    let port = free_udp_tcp_port();
    let conf = hand_written(port);
    let conf_path = temp_file("turnserver.conf", &conf);
    let toml = import_ok(&conf_path);
    let by_kind = check_every_option_accounted(&conf, &toml);
    assert_eq!(options_of(&by_kind, "unmapped"), ["cli-password"]);
    assert_eq!(
        options_of(&by_kind, "default"),
        ["fingerprint", "lt-cred-mech", "no-multicast-peers"]
    );
    assert!(
        !toml.contains("qwerty"),
        "an unmapped value was copied:\n{toml}"
    );

    let cfg = resolve(&toml);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(cfg.listen, vec![SocketAddr::new(ip, port)]);
    assert_eq!(cfg.relay_ips, vec![ip]);
    assert_eq!((cfg.min_port, cfg.max_port), (61000, 65535));
    assert_eq!(cfg.realm, "import.example");
    assert_eq!(
        cfg.users,
        HashMap::from([(USER.to_string(), PASSWORD.to_string())])
    );
    assert_eq!(cfg.auth_secrets, vec![SECRET.to_string()]);
    assert_eq!((cfg.user_quota, cfg.total_quota), (8, 500));
    assert_eq!(cfg.max_lifetime_secs, 1200);
    assert_eq!(cfg.nonce_lifetime_secs, 300);
    // max-bps is bytes per second in coturn, bits per second in turnkey.
    assert_eq!(cfg.bandwidth.allocation_bps, 8_000_000);
    assert_eq!(
        shown(&cfg.deny_peer),
        [
            "10.0.0.0/30",
            "10.0.0.4/31",
            "10.0.0.6/32",
            "10.0.0.8/29",
            "10.0.0.16/28",
            "10.0.0.32/27",
            "10.0.0.64/26",
            "10.0.0.128/25",
        ]
    );
    assert_eq!(
        shown(&cfg.allow_peer),
        ["10.0.0.7/32", "127.0.0.0/8", "::1/128"]
    );
    assert_eq!(cfg.software, None);
    assert!(cfg.tls_listen.is_empty() && cfg.dtls_listen.is_empty());

    // A server started from the imported file relays for the imported user and secret.
    let toml_path = temp_file("imported.toml", &toml);
    let server = ServerGuard::turn_server(&["--config", toml_path.to_str().expect("UTF-8 path")]);
    let (peer, peer_port) = common::start_echo_peer(61000);
    relay_through(port, peer_port, ["-w", PASSWORD]);
    relay_through(port, peer_port, ["-W", SECRET]);
    let allocations = server.metric("turn_allocation_requests_total", &[("result", "success")]);
    drop(peer);
    drop(server);
    let _ = std::fs::remove_file(toml_path);
    let _ = std::fs::remove_file(conf_path);
    assert!(
        allocations >= 2.0,
        "turn_allocation_requests_total{{result=\"success\"}} = {allocations}"
    );
}

#[test]
fn unreadable_or_invalid_files_exit_2_naming_the_line() {
    let missing = std::env::temp_dir().join("turnkey-no-such-turnserver.conf");
    let out = import(&missing);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("turnkey-no-such-turnserver.conf") && out.stdout.is_empty(),
        "{out:?}"
    );

    let bad = temp_file(
        "bad.conf",
        "realm=example.org\n# fine\nlistening-port=abc\n",
    );
    let out = import(&bad);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(&format!("{}:3:", bad.display()))
            && out.stderr.contains("listening-port")
            && out.stdout.is_empty(),
        "{out:?}"
    );
    let _ = std::fs::remove_file(bad);
}
