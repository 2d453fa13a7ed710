//! Ethernet → IPv4/IPv6 → UDP parsing with direct packet access, following contract 2:
//! only untagged frames, IPv4 without options and not fragmented, IPv6 whose next header
//! is UDP, consistent lengths, a valid IPv4 header checksum, unicast addresses. Anything
//! else is reported with the counter it belongs to and is passed up unchanged.

use aya_ebpf::{macros::map, maps::HashMap, programs::XdpContext};
use relay_common::counter::{BAD_CHECKSUM_PASSED, MALFORMED_PASSED, OTHER_PASSED};

use crate::csum;

/// UDP ports (host byte order) on which Binding requests are answered.
#[map(name = "STUN_PORTS")]
static STUN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// Offset of the UDP header in an IPv4 / IPv6 frame that the kernel answers.
pub const L4_V4: usize = ETH_HLEN + IPV4_HLEN;
pub const L4_V6: usize = ETH_HLEN + IPV6_HLEN;

/// A UDP datagram for a served port that passed every check below STUN.
pub struct Udp {
    pub v6: bool,
    /// Length from the UDP header (header included); equals the IP payload length.
    pub udp_len: usize,
    /// The IPv4 sender sent no checksum (zero).
    pub no_checksum: bool,
    /// Bytes in the frame as received (IP total length + Ethernet padding).
    pub frame_len: usize,
}

/// Pointer to `N` bytes at `off` in the packet, if the packet is long enough.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<*const [u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    Some((start + off) as *const [u8; N])
}

#[inline(always)]
fn served(port: u16) -> bool {
    // SAFETY: the value is only tested for presence, never read through a stale pointer.
    unsafe { STUN_PORTS.get(port) }.is_some()
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses the frame; `Err(counter)` means pass it up, counted under `counter`.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Udp, u32> {
    let eth = bytes_at::<ETH_HLEN>(ctx, 0).ok_or(OTHER_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    let eth = unsafe { &*eth };
    let frame_len = ctx.data_end() - ctx.data();
    match be16(eth, 12) {
        0x0800 => parse_v4(ctx, eth, frame_len),
        0x86DD => parse_v6(ctx, eth, frame_len),
        _ => Err(OTHER_PASSED),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, eth: &[u8; ETH_HLEN], frame_len: usize) -> Result<Udp, u32> {
    let ip_ptr = bytes_at::<IPV4_HLEN>(ctx, ETH_HLEN).ok_or(OTHER_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    let ip = unsafe { &*ip_ptr };
    if ip[0] >> 4 != 4 || ip[9] != 17 {
        return Err(OTHER_PASSED);
    }
    let ihl = (ip[0] & 0x0f) as usize;
    let frag = be16(ip, 6);
    if ihl < 5 || frag & 0x1fff != 0 {
        // A later fragment carries no UDP header: no port to judge by.
        return Err(OTHER_PASSED);
    }
    let udp = bytes_at::<UDP_HLEN>(ctx, ETH_HLEN + ihl * 4).ok_or(OTHER_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    if !served(be16(unsafe { &*udp }, 2)) {
        return Err(OTHER_PASSED);
    }
    // From here on the frame is for a served port.
    if ihl != 5 || frag & 0x2000 != 0 {
        return Err(MALFORMED_PASSED);
    }
    let total = be16(ip, 2) as usize;
    if total < IPV4_HLEN + UDP_HLEN || ETH_HLEN + total > frame_len {
        return Err(MALFORMED_PASSED);
    }
    // SAFETY: the 20 header bytes are inside the packet (checked above).
    let sum =
        unsafe { csum::add(ip_ptr as *const u8, IPV4_HLEN as u32, 0) }.ok_or(MALFORMED_PASSED)?;
    if csum::fold(sum) != 0xffff {
        return Err(BAD_CHECKSUM_PASSED);
    }
    let (src, dst) = (&ip[12..16], &ip[16..20]);
    if eth[6] & 1 != 0
        || src[0] >= 224
        || src == [0, 0, 0, 0]
        || dst[0] >= 224
        || dst == [0, 0, 0, 0]
    {
        return Err(MALFORMED_PASSED);
    }
    let udp = bytes_at::<UDP_HLEN>(ctx, L4_V4).ok_or(MALFORMED_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    let udp = unsafe { &*udp };
    let udp_len = be16(udp, 4) as usize;
    if udp_len != total - IPV4_HLEN || be16(udp, 0) == 0 {
        return Err(MALFORMED_PASSED);
    }
    Ok(Udp {
        v6: false,
        udp_len,
        no_checksum: be16(udp, 6) == 0,
        frame_len,
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, eth: &[u8; ETH_HLEN], frame_len: usize) -> Result<Udp, u32> {
    let ip = bytes_at::<IPV6_HLEN>(ctx, ETH_HLEN).ok_or(OTHER_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 || ip[6] != 17 {
        // Extension headers (or not UDP): the port is not at a fixed place.
        return Err(OTHER_PASSED);
    }
    let udp = bytes_at::<UDP_HLEN>(ctx, L4_V6).ok_or(OTHER_PASSED)?;
    // SAFETY: `bytes_at` checked that these bytes lie inside the packet.
    let udp = unsafe { &*udp };
    if !served(be16(udp, 2)) {
        return Err(OTHER_PASSED);
    }
    let payload = be16(ip, 4) as usize;
    if payload < UDP_HLEN || L4_V6 + payload > frame_len {
        return Err(MALFORMED_PASSED);
    }
    let (src, dst) = (&ip[8..24], &ip[24..40]);
    if eth[6] & 1 != 0 || src[0] == 0xff || dst[0] == 0xff || is_zero16(src) || is_zero16(dst) {
        return Err(MALFORMED_PASSED);
    }
    let udp_len = be16(udp, 4) as usize;
    if udp_len != payload || be16(udp, 0) == 0 {
        return Err(MALFORMED_PASSED);
    }
    if be16(udp, 6) == 0 {
        // IPv6 requires a UDP checksum: zero is invalid.
        return Err(BAD_CHECKSUM_PASSED);
    }
    Ok(Udp {
        v6: true,
        udp_len,
        no_checksum: false,
        frame_len,
    })
}

#[inline(always)]
fn is_zero16(a: &[u8]) -> bool {
    let mut acc = 0u8;
    let mut i = 0;
    while i < 16 {
        acc |= a[i];
        i += 1;
    }
    acc == 0
}
