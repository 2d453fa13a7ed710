// The nightly bpfel build of one eBPF crate, shared by `relay/build.rs` and
// `bench/build.rs` (each `include!`s this file): both build an XDP object from source the
// same way and differ only in the crate, the skip variable and the words of the error.

/// Builds the eBPF crate in `ebpf_dir` (binary `bin`) with `rustup run nightly cargo`
/// for bpfel-unknown-none into `target_dir` and copies the object to `object`. `what`
/// names it in errors; `skip` is the variable that skips the build.
fn build_ebpf(
    ebpf_dir: &std::path::Path,
    bin: &str,
    target_dir: &std::path::Path,
    object: &std::path::Path,
    what: &str,
    skip: &str,
) {
    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--quiet"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(ebpf_dir);
    // The outer build's settings (toolchain, flags, wrappers) must not leak into the
    // nightly bpfel build.
    for (key, _) in std::env::vars_os() {
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
        panic!("could not run `rustup run nightly cargo` to build {what}: {e}. Run `cargo xtask setup` first, or set {skip}=1 to build without it.")
    });
    if !status.success() {
        panic!(
            "building {what} in {} failed ({status}). It needs the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`, or set {skip}=1 to build without it.",
            ebpf_dir.display()
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release").join(bin);
    std::fs::copy(&built, object)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), object.display()));
}
