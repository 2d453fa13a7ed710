//! Builds the bench's XDP programs from `ebpf/bench-ebpf` (generator, floor, sink) with the
//! nightly toolchain and bpf-linker, the way `relay/build.rs` builds the relay's, and
//! hands the object's path to the crate as `BENCH_EBPF_OBJECT` (`include_bytes!`).
//!
//! `BENCH_SKIP_EBPF=1` embeds an empty object instead: the other benches still build and
//! run, and `relay-bench turn-xdp` says plainly that it cannot run.

use std::{env, fs, path::PathBuf};

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
    println!(
        "cargo::rerun-if-changed={}",
        manifest_dir.join("../ebpf/build_ebpf.rs").display()
    );
    println!("cargo::rustc-env=BENCH_EBPF_OBJECT={}", object.display());

    if env::var("BENCH_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(&object, []).expect("write empty eBPF object");
        println!("cargo::warning=BENCH_SKIP_EBPF=1: relay-bench turn-xdp will not run");
        return;
    }
    build_ebpf(
        &ebpf_dir,
        "bench-ebpf",
        &out_dir.join("ebpf-target"),
        &object,
        "the bench's eBPF programs",
        "BENCH_SKIP_EBPF",
    );
}

include!("../ebpf/build_ebpf.rs");
