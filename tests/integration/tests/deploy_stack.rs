//! The deployment files of `deploy/` and the multi-process topology of `scripts/stack.sh`.
//!
//! - `deploy/docker-compose.yml` must pass Debian's `docker-compose config` with the variables
//!   of `deploy/.env.example` (no Docker engine here, so nothing is started).
//! - Every Grafana dashboard in `deploy/grafana/*.json` parses, uses the provisioned datasource,
//!   and every panel has queries; every metric name a query uses is listed in README.md.
//! - Every key of each service's `FileConfig` (in `*/src/config.rs`) is documented in its
//!   sample config `deploy/<service>.toml`.
//! - [`every_dashboard_query_returns_data`]: `scripts/stack.sh` starts Redis, turn-server, two
//!   signaling nodes, an SFU node and a real Prometheus (Debian's `prometheus`, scraping every
//!   second) on free loopback ports; light load goes through it (coturn's `turnutils_uclient`
//!   relaying through an echo peer, a wrong password, `turnutils_stunclient`, and two aiortc
//!   participants of `tests/aiortc/sfu_client.py` in an SFU room through signaling). Then every
//!   panel query of every dashboard must return a non-empty result from Prometheus's HTTP API,
//!   so renaming a metric (or a label a query groups by being gone) breaks the build.
//!
//! Needs `docker-compose`, `prometheus`, `redis-server`, coturn's tools and the aiortc venv,
//! all installed by `bash scripts/test.sh`. A missing tool fails the test; it is never skipped.

mod common;

use common::{bin_path, free_udp_tcp_port, http_get, require_tool, run_with_timeout, TOOL_TIMEOUT};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Static TURN user the stack's turn-server accepts (`STACK_TURN_USER`).
const TURN_USER: &str = "deploy";
const TURN_PASSWORD: &str = "deploy-password";
/// Signaling API key of the stack (`STACK_API_KEY`).
const API_KEY: &str = "deploykey:deploy-api-secret";
/// TURN relay ports of the stack's turn-server: above Linux's ephemeral range, away from the
/// ports the tests hand out (where the echo peer's port comes from).
const RELAY_PORTS: (u16, u16) = (64000, 64999);
/// How long every panel query gets to return data after the load ran (rate() needs two scrapes
/// of a series; the stack scrapes every second).
const DATA_TIMEOUT: Duration = Duration::from_secs(45);

fn root() -> &'static Path {
    Path::new(common::ROOT)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_file_is_valid() {
    let tool = require_tool("docker-compose");
    let compose = root().join("deploy/docker-compose.yml");
    let env = root().join("deploy/.env.example");
    let out = run_with_timeout(
        Command::new(tool)
            .arg("-f")
            .arg(&compose)
            .arg("--env-file")
            .arg(&env)
            .arg("config"),
        TOOL_TIMEOUT,
    );
    assert!(
        out.success(),
        "docker-compose config failed ({:?}):\n{}",
        out.status,
        out.combined()
    );
    for service in [
        "redis:",
        "turn:",
        "signaling-1:",
        "signaling-2:",
        "sfu:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == format!("  {service}")),
            "service {service} missing in the resolved compose file:\n{}",
            out.stdout
        );
    }
    // Every variable the compose file uses is documented in .env.example.
    let text = read(&compose);
    let example = read(&env);
    let documented: BTreeSet<&str> = example
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.starts_with('#'))
        .collect();
    for (i, _) in text.match_indices("${") {
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            documented.contains(name.as_str()),
            "deploy/docker-compose.yml uses ${{{name}}}, which deploy/.env.example does not set"
        );
    }
    assert!(
        !out.stderr.contains("WARNING"),
        "docker-compose config warned (an unset variable?):\n{}",
        out.stderr
    );
}

/// Every dashboard of `deploy/grafana`: (file name, parsed JSON).
fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("deploy/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let json = serde_json::from_str(&read(&p))
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect()
}

/// Every panel of a dashboard, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// (dashboard file, panel title, expr) of every panel query.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    file.clone(),
                    title.clone(),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

/// The datasource uid provisioned in deploy/grafana/provisioning/datasources.
fn provisioned_datasource_uid() -> String {
    let text = read(&root().join("deploy/grafana/provisioning/datasources/prometheus.yml"));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().trim_matches('"').to_string())
        .expect("uid: in the datasource provisioning file")
}

/// Metric names in a PromQL expression: identifiers with one of our prefixes.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
            continue;
        }
        if ["turn_", "stun_", "signaling_", "sfu_", "turnkey_"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// True if `word` occurs in `text` as a whole metric name (not as the prefix of a longer one).
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

#[test]
fn dashboards_parse_and_every_panel_has_queries() {
    let uid = provisioned_datasource_uid();
    let all = dashboards();
    let files: BTreeSet<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    for want in ["overview.json", "turn.json", "signaling.json", "sfu.json"] {
        assert!(files.contains(want), "deploy/grafana/{want} missing");
    }
    let docs = read(&root().join("README.md")) + &read(&root().join("docs/CONTRACT.md"));
    let mut uids = BTreeSet::new();
    for (file, d) in &all {
        let duid = d["uid"].as_str().unwrap_or_default();
        assert!(!duid.is_empty(), "{file}: no uid");
        assert!(
            uids.insert(duid.to_string()),
            "{file}: uid {duid} used twice"
        );
        let ps = panels(d);
        assert!(!ps.is_empty(), "{file}: no panels");
        for p in ps {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{file}: a panel without a title");
            assert_eq!(
                p["datasource"]["uid"], uid,
                "{file} / {title}: not the provisioned datasource"
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{file} / {title}: no targets");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.trim().is_empty(),
                    "{file} / {title}: a target without expr"
                );
                assert_eq!(
                    t["datasource"]["uid"], uid,
                    "{file} / {title}: a target not on the provisioned datasource"
                );
                for name in metric_names(expr) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    assert!(
                        mentions(&docs, &name) || mentions(&docs, base),
                        "{file} / {title}: metric {name} is listed neither in README.md's \
                         Metrics section nor in docs/CONTRACT.md"
                    );
                }
            }
        }
    }
}

#[test]
fn sample_configs_document_every_key() {
    for (crate_dir, sample) in [
        ("services/turn-server", "deploy/turn-server.toml"),
        ("services/stun-server", "deploy/stun-server.toml"),
        ("services/signaling", "deploy/signaling.toml"),
        ("services/sfu", "deploy/sfu.toml"),
    ] {
        let keys = common::file_config_keys(crate_dir);
        assert!(keys.len() >= 5, "{crate_dir}: FileConfig keys {keys:?}");
        let toml = read(&root().join(sample));
        let documented: BTreeSet<&str> = toml
            .lines()
            .filter_map(|l| {
                let l = l.trim_start_matches('#').trim();
                let (k, _) = l.split_once('=')?;
                Some(k.trim())
            })
            .collect();
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !documented.contains(k.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{sample} does not document {missing:?} (keys of {crate_dir}'s FileConfig)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The stack under load
// ---------------------------------------------------------------------------------------------

/// A running `scripts/stack.sh` topology; `stack.sh stop` on drop.
struct Stack {
    env: Vec<(String, String)>,
    dir: PathBuf,
    /// `stack.env` as written by `stack.sh start`.
    vars: BTreeMap<String, String>,
}

impl Stack {
    fn command(env: &[(String, String)], action: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/stack.sh")).arg(action);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn start() -> Stack {
        let bin_dir = bin_path("turn-server")
            .parent()
            .expect("binary directory")
            .to_path_buf();
        for bin in ["signaling", "sfu"] {
            let _ = bin_path(bin);
        }
        let dir = std::env::temp_dir().join(format!(
            "turnkey-deploy-stack-{}-{}",
            std::process::id(),
            free_udp_tcp_port()
        ));
        let port = || free_udp_tcp_port().to_string();
        let env: Vec<(String, String)> = vec![
            ("STACK_DIR", dir.display().to_string()),
            ("STACK_BIN_DIR", bin_dir.display().to_string()),
            ("STACK_REDIS_PORT", port()),
            ("STACK_TURN_PORT", port()),
            ("STACK_TURN_METRICS", port()),
            ("STACK_RELAY_MIN", RELAY_PORTS.0.to_string()),
            ("STACK_RELAY_MAX", RELAY_PORTS.1.to_string()),
            ("STACK_SIG1_PORT", port()),
            ("STACK_SIG1_METRICS", port()),
            ("STACK_SIG2_PORT", port()),
            ("STACK_SIG2_METRICS", port()),
            ("STACK_SFU_MEDIA", port()),
            ("STACK_SFU_WORKERS", "1".to_string()),
            ("STACK_SFU_LINK", port()),
            ("STACK_SFU_METRICS", port()),
            ("STACK_PROM_PORT", port()),
            ("STACK_API_KEY", API_KEY.to_string()),
            ("STACK_TURN_USER", format!("{TURN_USER}:{TURN_PASSWORD}")),
            ("STACK_ALLOW_PEER", "127.0.0.0/8".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = run_with_timeout(&mut Stack::command(&env, "start"), Duration::from_secs(120));
        if !out.success() {
            let _ = run_with_timeout(&mut Stack::command(&env, "stop"), Duration::from_secs(30));
            panic!(
                "scripts/stack.sh start failed ({:?}):\n{}",
                out.status,
                out.combined()
            );
        }
        let vars = read(&dir.join("stack.env"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Stack { env, dir, vars }
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing in stack.env: {:?}", self.vars))
    }

    fn addr(&self, name: &str) -> SocketAddr {
        let v = self.var(name);
        let v = v.strip_prefix("http://").unwrap_or(v);
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v} is not ADDR:PORT: {e}"))
    }

    /// The end of every process log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "redis",
            "turn",
            "sfu",
            "signaling-1",
            "signaling-2",
            "prometheus",
        ] {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {name}.log (end) ---\n{}\n", tail.join("\n")));
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let out = run_with_timeout(
            &mut Stack::command(&self.env, "stop"),
            Duration::from_secs(60),
        );
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if !out.success() {
            eprintln!(
                "scripts/stack.sh stop: {:?}\n{}",
                out.status,
                out.combined()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `turnutils_uclient` against the stack's TURN server: one client, ChannelData through the
/// echo peer, with `password`.
fn uclient(turn: SocketAddr, peer_port: u16, password: &str) -> common::ToolOutput {
    let tool = require_tool("turnutils_uclient");
    let args: Vec<String> = [
        "-c", "-X", "-z", "5", "-m", "1", "-n", "30", "-l", "200", "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([turn.port().to_string()])
    .chain(["-e", "127.0.0.1", "-r"].iter().map(|s| s.to_string()))
    .chain([peer_port.to_string()])
    .chain(
        ["-u", TURN_USER, "-w", password]
            .iter()
            .map(|s| s.to_string()),
    )
    .chain([turn.ip().to_string()])
    .collect();
    run_with_timeout(Command::new(tool).args(&args), TOOL_TIMEOUT)
}

/// Percent-encodes a query parameter value.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs an instant query; Ok(number of series) or Err(reason).
fn prom_query(prom: SocketAddr, expr: &str) -> Result<usize, String> {
    let path = format!("/api/v1/query?query={}", url_encode(expr));
    let (status, body) = http_get(prom, &path).map_err(|e| format!("GET: {e}"))?;
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {e}: {body}"))?;
    if status != 200 || json["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(json["data"]["result"].as_array().map_or(0, Vec::len))
}

#[test]
fn every_dashboard_query_returns_data() {
    let python = common::aiortc_python();
    let queries = panel_queries();
    assert!(queries.len() > 30, "only {} panel queries", queries.len());

    let stack = Stack::start();
    let turn = stack.addr("TURN_ADDR");
    let prom = stack.addr("PROMETHEUS");
    let sig1 = stack.var("SIGNALING_1").to_string();
    let started = Instant::now();

    // SFU + signaling: two aiortc participants in an SFU room through signaling node 1 (the
    // SFU registered itself in Redis; the node places the room on it).
    let script = root().join("tests/aiortc/sfu_client.py");
    let aiortc = std::thread::spawn(move || {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--base-url", &sig1])
            .args(["--key", API_KEY])
            .args(["--timeout", "40"])
            .args(["--frames", "10"]);
        common::run_browser_script(
            &mut cmd,
            Duration::from_secs(90),
            "tests/aiortc/sfu_client.py",
        )
    });

    // TURN: an allocation relaying through an echo peer, then a wrong password; STUN Binding.
    let (_peer, peer_port) = common::start_echo_peer(u16::MAX);
    let ok = uclient(turn, peer_port, TURN_PASSWORD);
    assert!(
        ok.success(),
        "uclient failed:\n{}\n{}",
        ok.combined(),
        stack.logs()
    );
    let bad = uclient(turn, peer_port, "not-the-password");
    assert!(
        !bad.success(),
        "uclient succeeded with a wrong password:\n{}",
        bad.combined()
    );
    let stun = run_with_timeout(
        Command::new(require_tool("turnutils_stunclient")).args([
            "-p",
            &turn.port().to_string(),
            &turn.ip().to_string(),
        ]),
        TOOL_TIMEOUT,
    );
    assert!(
        stun.stdout.contains("UDP reflexive addr:"),
        "turnutils_stunclient got no reflexive address:\n{}",
        stun.combined()
    );

    let (result, report) = aiortc.join().expect("aiortc thread panicked");
    assert_eq!(result["ok"], true, "{report}");
    println!("load done after {:?}", started.elapsed());

    // Every panel query must return at least one series.
    let mut missing: Vec<String> = Vec::new();
    let deadline = Instant::now() + DATA_TIMEOUT;
    loop {
        missing.clear();
        for (file, title, expr) in &queries {
            match prom_query(prom, expr) {
                Ok(n) if n > 0 => {}
                Ok(_) => missing.push(format!("{file} / {title}: {expr}: empty result")),
                Err(e) => missing.push(format!("{file} / {title}: {expr}: {e}")),
            }
        }
        if missing.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        missing.is_empty(),
        "{} of {} panel queries returned no data after {:?}:\n{}\nPrometheus targets: {:?}",
        missing.len(),
        queries.len(),
        DATA_TIMEOUT,
        missing.join("\n"),
        http_get(prom, "/api/v1/targets").map(|r| r.1)
    );
    println!(
        "{} panel queries of {} dashboards returned data, {:?} after the stack started",
        queries.len(),
        dashboards().len(),
        started.elapsed()
    );
}
