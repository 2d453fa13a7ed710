//! Builds the XDP object from `ebpf/relay-ebpf` with the nightly toolchain and bpf-linker,
//! and hands its path to the crate as `RELAY_EBPF_OBJECT` (embedded with
//! `include_bytes!`). The object is always built from source, never committed.
//!
//! `RELAY_SKIP_EBPF=1` embeds an empty object instead: the daemon then runs userspace-only
//! and says so at start-up. Useful where no nightly/bpf-linker exists (e.g. fuzzing).

use std::{env, fs, path::PathBuf};

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
    println!(
        "cargo::rerun-if-changed={}",
        manifest_dir.join("../ebpf/build_ebpf.rs").display()
    );
    println!("cargo::rustc-env=RELAY_EBPF_OBJECT={}", object.display());

    if env::var("RELAY_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(&object, []).expect("write empty eBPF object");
        println!(
            "cargo::warning=RELAY_SKIP_EBPF=1: building a userspace-only relay (no XDP fast path)"
        );
        return;
    }
    build_ebpf(
        &ebpf_dir,
        "relay-ebpf",
        &out_dir.join("ebpf-target"),
        &object,
        "the eBPF program",
        "RELAY_SKIP_EBPF",
    );
}

include!("../ebpf/build_ebpf.rs");
