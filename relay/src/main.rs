//! The `relay` binary: the daemon (`relay run`) and the operator CLI.
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    println!(
        "relay: {} bytes of eBPF object",
        relay::xdp::EBPF_OBJECT.len()
    );
}
