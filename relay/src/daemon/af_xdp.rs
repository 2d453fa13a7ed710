//! Turning on the AF_XDP side of the TURN workers (`xdp.af_xdp`) once the XDP program is
//! attached: the listen ports are marked for steering, each worker opens its sockets
//! (one per RX queue it owns) and registers its relayed ports, and only then does the
//! program start steering. Any failure leaves TURN on the kernel sockets, with a log
//! line that says why.

use crate::config::Config;
use crate::dataplane::xsk_path::rx_queues;
use crate::dataplane::{Dataplane, XskInterface, XskSetup};
use crate::xdp::FastPath;
use crate::xdp::xsk_steer::XskSteering;

/// How long a resolved next hop is reused, as the kernel fast path does.
const NEXT_HOP_TTL_MS: u32 = 1000;

/// Starts the AF_XDP side; returns the steering handle to turn off at shutdown, or None
/// (logged) when it is off or could not start.
pub(super) fn start(config: &Config, fp: &FastPath, dataplane: &Dataplane) -> Option<XskSteering> {
    if !config.xdp.af_xdp {
        return None;
    }
    let off = |why: &str| {
        tracing::warn!(
            "AF_XDP path off (xdp.af_xdp = true): {why}; TURN uses the kernel's UDP sockets"
        );
        None
    };
    if !config.turn.enabled {
        return off("it serves TURN, and turn.enabled is false");
    }
    let Some(steering) = fp.xsk_steering() else {
        return off("this build's XDP program cannot steer frames to AF_XDP sockets");
    };
    let Some(probe) = fp.next_hop_probe() else {
        return off("this build's XDP object has no next-hop probe program");
    };
    // Next hops through `xdp.fib_interface`, as the kernel TURN path looks them up
    // (forwarding on there only; see relay::xdp::fib).
    let fib_ifindex = match crate::xdp::fib::prepare(&config.xdp.fib_interface) {
        Ok(i) => i,
        Err(e) => return off(&format!("{e}")),
    };
    let probe = probe.with_lookup_ifindex(fib_ifindex);
    let mut interfaces = Vec::new();
    for (name, _) in fp.attachments() {
        match crate::xdp::fib::ifindex(name) {
            Ok(ifindex) => interfaces.push(XskInterface {
                name: name.clone(),
                ifindex,
                queues: rx_queues(name),
            }),
            Err(e) => return off(&format!("{e}")),
        }
    }
    for itf in &interfaces {
        if let Err(e) = steering.add_interface(itf.ifindex) {
            return off(&format!("{e}"));
        }
    }
    for a in dataplane.listen() {
        if let Err(e) = steering.mark_listen(a.port()) {
            return off(&format!("cannot mark listen port {}: {e}", a.port()));
        }
    }
    let workers = dataplane.workers() as u32;
    let setup = XskSetup {
        steering: steering.clone(),
        probe,
        interfaces: interfaces.clone(),
        workers,
        next_hop_ttl: std::time::Duration::from_millis(u64::from(NEXT_HOP_TTL_MS)),
    };
    match dataplane.enable_xsk(&setup) {
        Ok(sockets) => {
            if let Err(e) = steering.set_workers(workers) {
                let _ = steering.turn_off();
                return off(&format!("cannot turn steering on: {e}"));
            }
            tracing::info!(
                sockets,
                workers,
                interfaces = ?interfaces.iter().map(|i| format!("{} ({} queues)", i.name, i.queues)).collect::<Vec<_>>(),
                "AF_XDP path on: TURN UDP frames the kernel does not relay itself reach the workers through AF_XDP sockets"
            );
            Some(steering)
        }
        Err(e) => {
            let _ = steering.turn_off();
            off(&e)
        }
    }
}

/// Stops steering (before the workers and their sockets go).
pub(super) fn stop(steering: Option<XskSteering>) {
    if let Some(s) = steering
        && let Err(e) = s.turn_off()
    {
        tracing::warn!(error = %e, "cannot turn AF_XDP steering off; frames for closed sockets pass to the kernel");
    }
}
