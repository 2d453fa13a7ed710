//! Loading and attaching the XDP fast path, and reading its counters.

/// The eBPF object built from `ebpf/relay-ebpf` by build.rs (empty when built with
/// `RELAY_SKIP_EBPF=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("RELAY_EBPF_OBJECT"));
