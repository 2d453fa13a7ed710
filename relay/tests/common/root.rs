//! For the test binaries that need root (network namespaces, XDP attach,
//! BPF_PROG_TEST_RUN): whether they can run ([`privileged`]: true as root; otherwise the
//! test is skipped with a line saying so, or fails when `RELAY_REQUIRE_PRIVILEGED=1`, as
//! `cargo xtask test` sets, so CI cannot skip it silently) and the `ip` command they set
//! their namespaces up with. Include it with `#[path]`.
#![allow(dead_code)]

/// True as root; see the module doc.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("RELAY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!(
            "this test needs root (netns, XDP, BPF_PROG_TEST_RUN) and \
             RELAY_REQUIRE_PRIVILEGED=1 is set"
        );
    }
    eprintln!("skipped: needs root");
    false
}

/// Runs `ip ARGS`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Forwarding off on every interface of namespace `ns` (a new namespace inherits IPv4's
/// from the host) and on for `lo` only, as the daemon sets it for its FIB lookups
/// (`xdp.fib_interface`): the relay's own interfaces never route.
pub fn forward_on_lo_only(ns: &str) {
    let st = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .args([
            "net.ipv4.conf.all.forwarding=0",
            "net.ipv6.conf.all.forwarding=0",
            "net.ipv4.conf.lo.forwarding=1",
            "net.ipv6.conf.lo.forwarding=1",
        ])
        .status()
        .expect("run sysctl");
    assert!(st.success(), "forwarding on lo only in {ns}");
}
