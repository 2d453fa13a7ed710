//! Builds the bench's XDP programs from `ebpf/bench-ebpf` (generator, floor, sink) with the
//! nightly toolchain and bpf-linker, the way `relay/build.rs` builds the relay's, and
//! hands the object's path to the crate as `BENCH_EBPF_OBJECT` (`include_bytes!`).
//!
//! `BENCH_SKIP_EBPF=1` embeds an empty object instead: the other benches still build and
//! run, and `relay-bench turn-xdp` says plainly that it cannot run.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../ebpf/bench-ebpf");
    let object = out_dir.join("bench-ebpf.o");

    println!("cargo::rerun-if-env-changed=BENCH_SKIP_EBPF");
    for p in [ebpf_dir.join("src"), ebpf_dir.join("Cargo.toml")] {
        println!("cargo::rerun-if-changed={}", p.display());
    }
    println!("cargo::rustc-env=BENCH_EBPF_OBJECT={}", object.display());

    if env::var("BENCH_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(&object, []).expect("write empty eBPF object");
        println!("cargo::warning=BENCH_SKIP_EBPF=1: relay-bench turn-xdp will not run");
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
        panic!("could not run `rustup run nightly cargo` to build the bench's eBPF programs: {e}. Run `cargo xtask setup` first, or set BENCH_SKIP_EBPF=1 to build the bench without them.")
    });
    if !status.success() {
        panic!(
            "building the bench's eBPF programs in {} failed ({status}). They need the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`, or set BENCH_SKIP_EBPF=1.",
            ebpf_dir.display()
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/bench-ebpf");
    fs::copy(&built, object)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), object.display()));
}
