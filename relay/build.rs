//! Builds the XDP object from `ebpf/relay-ebpf` with the nightly toolchain and bpf-linker,
//! and hands its path to the crate as `RELAY_EBPF_OBJECT` (embedded with
//! `include_bytes!`). The object is always built from source, never committed.
//!
//! `RELAY_SKIP_EBPF=1` embeds an empty object instead: the daemon then runs userspace-only
//! and says so at start-up. Useful where no nightly/bpf-linker exists (e.g. fuzzing).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../ebpf/relay-ebpf");
    let common_dir = manifest_dir.join("../ebpf/relay-common");
    let object = out_dir.join("relay-ebpf.o");

    println!("cargo::rerun-if-env-changed=RELAY_SKIP_EBPF");
    for p in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        common_dir.join("src"),
    ] {
        println!("cargo::rerun-if-changed={}", p.display());
    }
    println!("cargo::rustc-env=RELAY_EBPF_OBJECT={}", object.display());

    if env::var("RELAY_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(&object, []).expect("write empty eBPF object");
        println!(
            "cargo::warning=RELAY_SKIP_EBPF=1: building a userspace-only relay (no XDP fast path)"
        );
        return;
    }
    build_ebpf(&ebpf_dir, &out_dir.join("ebpf-target"), &object);
}

fn build_ebpf(ebpf_dir: &Path, target_dir: &Path, object: &Path) {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--quiet"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(ebpf_dir);
    // The outer build's settings (toolchain, flags, wrappers) must not leak into the
    // nightly bpfel build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || matches!(
                key,
                "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOC"
                    | "RUSTUP_TOOLCHAIN"
            )
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not run `rustup run nightly cargo` to build the eBPF program: {e}. Run `cargo xtask setup` first, or set RELAY_SKIP_EBPF=1 for a userspace-only build.")
    });
    if !status.success() {
        panic!(
            "building the eBPF program in {} failed ({status}). It needs the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`, or set RELAY_SKIP_EBPF=1 for a userspace-only build.",
            ebpf_dir.display()
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/relay-ebpf");
    fs::copy(&built, object)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), object.display()));
}
