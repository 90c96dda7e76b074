//! Network namespaces a test builds for itself: a namespace joined to the host by a veth pair
//! on a /30 of 198.51.100.0/24 (TEST-NET-2, RFC 5737), with `tc` and `iptables` run inside or on
//! the host end. Removed on drop (deleting the namespace deletes the veth pair).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One namespace and its link to the host.
pub struct Netns {
    /// Namespace name (`ip netns`).
    pub name: String,
    /// Host end of the veth pair.
    pub host_if: String,
    /// Namespace end.
    pub ns_if: String,
    /// Host end's address.
    pub host_ip: Ipv4Addr,
    /// Namespace end's address.
    pub ns_ip: Ipv4Addr,
    wrapper_dir: Option<PathBuf>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates namespace `tk<tag><n>` with a veth pair: host end `198.51.100.(4k+1)/30`, namespace
    /// end `.(4k+2)`, both up, loopback up in the namespace. Err if the machine cannot (no root,
    /// no `ip`).
    pub fn create(tag: &str) -> Result<Netns, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let k = (std::process::id() % 16) * 4 + n % 4;
        let id = format!("{tag}{}{n}", std::process::id() % 1000);
        let name = format!("tk{id}");
        let host_if = format!("tkh{id}");
        let ns_if = format!("tkn{id}");
        assert!(host_if.len() <= 15, "interface name too long: {host_if}");
        let base = (k * 4) as u8;
        let host_ip = Ipv4Addr::new(198, 51, 100, base + 1);
        let ns_ip = Ipv4Addr::new(198, 51, 100, base + 2);
        // Leftovers of a killed earlier run.
        let _ = run(&["ip", "netns", "del", &name]);
        let _ = run(&["ip", "link", "del", &host_if]);
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns {
            name,
            host_if,
            ns_if,
            host_ip,
            ns_ip,
            wrapper_dir: None,
        };
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        run(&["ip", "link", "set", &ns.ns_if, "netns", &ns.name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &ns.host_if,
        ])?;
        run(&["ip", "link", "set", &ns.host_if, "up"])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns.ns_if,
        ])?;
        ns.exec(&["ip", "link", "set", &ns.ns_if, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs `tc` on the host end (shapes what the host sends into the namespace).
    pub fn tc_host(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["tc"];
        full.extend_from_slice(args);
        let full: Vec<&str> = full
            .into_iter()
            .map(|a| if a == "DEV" { self.host_if.as_str() } else { a })
            .collect();
        run(&full)
    }

    /// A shell command line running `tc ARGS` on the host end (for scripts to run themselves).
    pub fn tc_host_cmd(&self, args: &str) -> String {
        format!("tc {}", args.replace("DEV", &self.host_if))
    }

    /// An executable that runs `program` inside the namespace (for Playwright's
    /// `executablePath`).
    pub fn wrapper(&mut self, program: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{}-wrap", self.name));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("run-in-netns");
        let script = format!(
            "#!/bin/sh\nexec ip netns exec {} {program} \"$@\"\n",
            self.name
        );
        std::fs::write(&path, script).expect("write wrapper");
        let _ = Command::new("chmod").arg("755").arg(&path).status();
        self.wrapper_dir = Some(dir);
        path
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
        if let Some(d) = &self.wrapper_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
