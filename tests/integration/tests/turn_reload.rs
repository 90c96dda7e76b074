//! turn-server reads its configuration again on SIGHUP and when its `--config` file changes,
//! without a restart: users, REST secrets, the peer policy, quotas, the admin token and the log
//! level change at once, live allocations stay, a file that fails to load changes nothing, and
//! a key that needs a restart is reported and ignored. Checked against the real binary with a
//! raw client and the admin API.

mod common;
mod wire;

use common::{free_udp_tcp_port, ServerGuard};
use rtc_stun::message::{METHOD_CREATE_PERMISSION, METHOD_REFRESH};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stun_proto::credential::mint_rest_credential;
use wire::{code, WireClient};

const TOKEN_1: &str = "first-admin-token-0123456789";
const TOKEN_2: &str = "second-admin-token-0123456789";

struct Setup {
    server: ServerGuard,
    listen: SocketAddr,
    admin: SocketAddr,
    file: PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The config file: fixed listeners plus `body`.
fn write_config(file: &Path, listen: SocketAddr, admin: SocketAddr, body: &str) {
    let text = format!(
        "listen = [\"{listen}\"]\nrelay_ip = [\"127.0.0.1\"]\nmin_port = 61000\nmax_port = 65535\n\
         admin_listen = \"{admin}\"\nworkers = 2\n{body}"
    );
    // Write then rename, as an editor or config management does, so a poll never sees half a
    // file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn start(body: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!(
        "turnkey-reload-{}-{}",
        std::process::id(),
        free_udp_tcp_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("turn-server.toml");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    write_config(&file, listen, admin, body);
    let server = ServerGuard::turn_server(&["--config", file.to_str().unwrap()]);
    Setup {
        server,
        listen,
        admin,
        file,
        _dir: TempDir(dir),
    }
}

impl Setup {
    fn rewrite(&self, body: &str) {
        write_config(&self.file, self.listen, self.admin, body);
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        common::admin_call(self.admin, Some(token), "GET", path, None)
    }

    fn reloads(&self, result: &str) -> f64 {
        self.server
            .metric("turn_config_reloads_total", &[("result", result)])
    }

    /// Waits until `turn_config_reloads_total{result}` reaches `n`.
    fn wait_reloads(&self, result: &str, n: f64) {
        self.wait(&format!("{result} reload #{n}"), || {
            self.reloads(result) >= n
        });
    }

    /// Waits until the admin API (with `token`) shows `user_quota`.
    fn wait_quota(&self, token: &str, quota: u64) {
        self.wait(&format!("user_quota {quota}"), || {
            let (status, c) = self.get("/v1/config", token);
            status == 200 && c["user_quota"] == quota
        });
    }

    fn wait(&self, what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "never saw {what}; log:\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sighup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }
}

fn rest_user(secret: &str, user: &str) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = mint_rest_credential(secret, user, 3600, now);
    (c.username, c.password)
}

#[test]
fn sighup_and_file_changes_reload_users_secrets_policy_quotas_token_and_log_level() {
    let s = start(&format!(
        "user = [\"alice:alicepw\"]\nauth_secret = [\"first-secret\"]\nuser_quota = 1\n\
         admin_token = \"{TOKEN_1}\"\n"
    ));
    let mut alice = WireClient::new(s.listen, "alice", "alicepw");
    alice.allocate();
    let mut alice2 = WireClient::new(s.listen, "alice", "alicepw");
    assert_eq!(code(&alice2.allocate_with(&[])), Some(486), "user_quota 1");
    let mut bob = WireClient::new(s.listen, "bob", "bobpw");
    assert_eq!(code(&bob.allocate_with(&[])), Some(401));
    // The loopback peer is refused by the default policy.
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    assert_eq!(
        code(&alice.call(METHOD_CREATE_PERMISSION, &[], &[peer])),
        Some(403)
    );

    // New file, applied on SIGHUP: bob instead of alice, a new REST secret, a quota of 2, the
    // loopback peer allowed, a new admin token, debug logs.
    s.rewrite(&format!(
        "user = [\"bob:bobpw\"]\nauth_secret = [\"second-secret\"]\nuser_quota = 2\n\
         allow_peer = [\"127.0.0.1/32\"]\nadmin_token = \"{TOKEN_2}\"\nlog_level = \"debug\"\n"
    ));
    s.sighup();
    s.wait_quota(TOKEN_2, 2);
    assert!(s.reloads("ok") >= 1.0);
    assert_eq!(code(&bob.allocate_with(&[])), None, "bob is a user now");
    let mut bob2 = WireClient::new(s.listen, "bob", "bobpw");
    assert_eq!(code(&bob2.allocate_with(&[])), None, "user_quota 2");
    assert_eq!(code(&alice2.allocate_with(&[])), Some(401), "alice is gone");
    let (u, p) = rest_user("second-secret", "carol");
    assert_eq!(
        code(&WireClient::new(s.listen, &u, &p).allocate_with(&[])),
        None
    );
    let (u, p) = rest_user("first-secret", "dave");
    assert_eq!(
        code(&WireClient::new(s.listen, &u, &p).allocate_with(&[])),
        Some(401),
        "the old secret no longer signs"
    );
    // alice's allocation was kept (listed, relayed address still hers) though her refreshes
    // now fail authentication.
    assert_eq!(s.get("/v1/allocations?user=alice", TOKEN_1).0, 401);
    let (status, list) = s.get("/v1/allocations?user=alice", TOKEN_2);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["allocations"].as_array().unwrap().len(), 1);
    // The policy: bob may now reach the loopback peer.
    assert_eq!(
        code(&bob.call(METHOD_CREATE_PERMISSION, &[], &[peer])),
        None
    );
    // The log level: admin requests are logged at debug.
    let (_, config) = s.get("/v1/config", TOKEN_2);
    assert_eq!(config["user_quota"], 2);
    assert_eq!(config["log_level"], "debug");
    assert!(
        s.server.log().contains("admin request"),
        "debug lines after log_level = debug:\n{}",
        s.server.log()
    );
    let reloaded = s
        .server
        .log()
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_default()
        .to_string();
    for key in [
        "user",
        "auth_secret",
        "user_quota",
        "allow_peer",
        "admin_token",
    ] {
        assert!(reloaded.contains(key), "{key} not in: {reloaded}");
    }
    for secret in ["bobpw", "second-secret", TOKEN_2] {
        assert!(!s.server.log().contains(secret), "{secret} logged");
    }

    // A file change alone (no signal) is picked up by the poll.
    s.rewrite(&format!(
        "user = [\"bob:bobpw\"]\nauth_secret = [\"second-secret\"]\nuser_quota = 5\n\
         allow_peer = [\"127.0.0.1/32\"]\nadmin_token = \"{TOKEN_2}\"\n"
    ));
    s.wait_quota(TOKEN_2, 5);

    // A file that fails to load: nothing changes, the error is logged and counted.
    s.rewrite("user = [\"bob:bobpw\"]\nno_such_key = 1\n");
    s.sighup();
    s.wait_reloads("error", 1.0);
    assert!(s.server.log().contains("no_such_key"), "{}", s.server.log());
    assert_eq!(s.get("/v1/config", TOKEN_2).1["user_quota"], 5);
    assert_eq!(
        code(&WireClient::new(s.listen, "bob", "bobpw").allocate_with(&[])),
        None
    );

    // A key that needs a restart: reported, ignored, the rest applied.
    let file = std::fs::read_to_string(&s.file).unwrap();
    assert!(file.contains("no_such_key"));
    let other = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    write_config(
        &s.file,
        other,
        s.admin,
        &format!("user = [\"bob:bobpw\"]\nuser_quota = 7\nadmin_token = \"{TOKEN_2}\"\n"),
    );
    s.sighup();
    s.wait_quota(TOKEN_2, 7);
    assert!(
        s.server.log().contains("need a restart") && s.server.log().contains("listen"),
        "{}",
        s.server.log()
    );
    let (_, config) = s.get("/v1/config", TOKEN_2);
    assert_eq!(config["user_quota"], 7);
    assert_eq!(config["listen"][0], s.listen.to_string());
    // Still serving on the old address; the live allocations are all still there.
    let r = bob.call(METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), None);
    let (_, list) = s.get("/v1/allocations", TOKEN_2);
    assert_eq!(list["allocations"].as_array().unwrap().len(), 5, "{list}");
}

/// A reload whose file no longer has `admin_listen` nor `admin_token` keeps the admin listener
/// (a restart-only key) but leaves it with no token: then no call is accepted, neither one
/// without `Authorization` nor `Bearer ` with nothing after it (an empty token once matched
/// both). `POST /admin/drain` on the metrics listener is gone the same way (404).
#[test]
fn a_reload_that_removes_the_admin_token_closes_the_admin_api() {
    let s = start(&format!("admin_token = \"{TOKEN_1}\"\n"));
    assert_eq!(s.get("/v1/config", TOKEN_1).0, 200);
    // The same file without the admin keys.
    let text = format!(
        "listen = [\"{}\"]\nrelay_ip = [\"127.0.0.1\"]\nmin_port = 61000\nmax_port = 65535\nworkers = 2\n",
        s.listen
    );
    let tmp = s.file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &s.file).unwrap();
    s.sighup();
    s.wait_reloads("ok", 1.0);
    for token in [None, Some(""), Some(TOKEN_1)] {
        let (status, body) = common::admin_call(s.admin, token, "GET", "/v1/config", None);
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    let metrics = s.server.metrics;
    for token in [None, Some(""), Some(TOKEN_1)] {
        let (status, body) = common::admin_call(metrics, token, "POST", "/admin/drain", None);
        assert_eq!(status, 404, "{token:?}: {body}");
    }
    let (status, _) = common::admin_call(metrics, None, "GET", "/readyz", None);
    assert_eq!(status, 200, "nothing started a drain");
}
