//! Builds the XDP fast path's eBPF object (`bpf/turn_xdp.c`) with clang when clang and the
//! libbpf headers are there, and sets `cfg(turn_xdp_object)` so `xdp.rs` embeds it. Without
//! them the crate still builds; `--xdp` then fails at start with an error that says so.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(turn_xdp_object)");
    println!("cargo:rerun-if-changed=bpf/turn_xdp.c");
    println!("cargo:rerun-if-env-changed=TURNKEY_XDP_CLANG");
    let clang = std::env::var("TURNKEY_XDP_CLANG").unwrap_or_else(|_| "clang".into());
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        println!(
            "cargo:warning=XDP fast path not built: /usr/include/bpf/bpf_helpers.h missing (apt install libbpf-dev clang)"
        );
        return;
    }
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let obj = Path::new(&out).join("turn_xdp.o");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/turn_xdp.c", "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo:rustc-cfg=turn_xdp_object"),
        Ok(s) => println!("cargo:warning=XDP fast path not built: {clang} exited with {s}"),
        Err(e) => println!("cargo:warning=XDP fast path not built: cannot run {clang}: {e}"),
    }
}
