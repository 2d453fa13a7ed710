//! Whether a test that needs root (network namespaces, XDP attach, BPF_PROG_TEST_RUN) can
//! run: true as root; otherwise it is skipped with a line saying so, or fails when
//! `RELAY_REQUIRE_PRIVILEGED=1` (as `cargo xtask test` sets), so CI cannot skip it
//! silently. Include it with `#[path]` from the test binaries that need it.

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
