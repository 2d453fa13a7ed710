//! The incoming frame as the TURN path sees it: Ethernet → IPv4/IPv6 → UDP, read a word
//! at a time, with every check a relayed frame needs. A frame that is not UDP over plain
//! IPv4/IPv6 is not TURN's business (`Err(None)`); a UDP frame that is odd in a way the
//! kernel does not relay (fragment, options, bad lengths or header checksum, no UDP
//! checksum or a partial one, TTL ≤ 1, multicast source) is marked `unusual` and passed
//! up later, once it is known to be TURN traffic (so that it is counted as such).

use aya_ebpf::programs::XdpContext;

use super::words::{Addr, addr_sum, fold, host, mapped, packet_ptr, rd_addr, rd16, rd32};

/// Ethernet header length.
pub const ETH: usize = 14;
/// Offset of the UDP header behind an IPv4 (no options) / IPv6 header.
pub const L4_V4: usize = ETH + 20;
pub const L4_V6: usize = ETH + 40;

/// What the incoming frame is. `repr(C)`, ordered so that no two adjacent fields are
/// constant zeros in either family (LLVM would merge their stores into a `memset` call).
#[repr(C)]
pub struct Pkt {
    pub src: Addr,
    pub dst: Addr,
    /// The UDP header's first word: source port then destination port, memory order.
    pub ports: u32,
    /// Identification of an IPv4 output (memory order): the input's (IPv4) or the
    /// input's UDP checksum (IPv6).
    pub ipid: u16,
    /// The incoming UDP checksum (memory order).
    pub csum: u16,
    /// UDP length (header included).
    pub ulen: usize,
    pub frame_len: usize,
    pub v6: bool,
    /// TOS / traffic class.
    pub tos: u8,
    /// Not relayable in the kernel, found during parsing (see the module doc).
    pub unusual: bool,
    /// IPv4 input with DF set.
    pub df: bool,
}

impl Pkt {
    /// Offset of the UDP header (a constant per family: the verifier needs packet offsets
    /// it can bound).
    #[inline(always)]
    pub fn l4(&self) -> usize {
        if self.v6 { L4_V6 } else { L4_V4 }
    }

    /// The source port (memory order).
    #[inline(always)]
    pub fn sport(&self) -> u16 {
        self.ports as u16
    }

    /// The destination port (memory order).
    #[inline(always)]
    pub fn dport(&self) -> u16 {
        (self.ports >> 16) as u16
    }
}

/// Parses the frame into `p`; `Err(None)` when it is not UDP over IPv4/IPv6 as handled
/// here.
#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Pkt) -> Result<(), Option<u32>> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + L4_V4 + 8 > end {
        return Err(None);
    }
    let frame_len = end - data;
    // SAFETY: the 42 bytes from `data` are inside the packet (checked above).
    let (ethertype, src_mac0) = unsafe { (rd16(data + 12), *((data + 6) as *const u8)) };
    let mut unusual = src_mac0 & 1 != 0;
    if ethertype == u16::from_ne_bytes([0x08, 0x00]) {
        let ip = data + ETH;
        // SAFETY: as above (20 IPv4 header bytes).
        let (w0, w1, w2, s, d) = unsafe {
            (
                rd32(ip),
                rd32(ip + 4),
                rd32(ip + 8),
                rd32(ip + 12),
                rd32(ip + 16),
            )
        };
        let frag = host((w1 >> 16) as u16);
        if w0 & 0xff != 0x45 || (w2 >> 8) & 0xff != 17 || frag & 0x1fff != 0 {
            // Options, later fragments, not UDP: the STUN path's business.
            return Err(None);
        }
        let total = host((w0 >> 16) as u16) as usize;
        if frag & 0x2000 != 0 || total < 28 || ETH + total > frame_len {
            unusual = true;
        }
        let sum = w0 as u64 + w1 as u64 + w2 as u64 + s as u64 + d as u64;
        if fold(sum) != 0xffff {
            unusual = true;
        }
        let udp = data + L4_V4;
        // SAFETY: the 8 UDP header bytes are inside the packet (checked above).
        let (ports, u1) = unsafe { (rd32(udp), rd32(udp + 4)) };
        let ulen = host(u1 as u16) as usize;
        if ulen + 20 != total {
            unusual = true;
        }
        let csum = (u1 >> 16) as u16;
        let ttl = w2 as u8;
        *p = Pkt {
            v6: false,
            src: mapped(s),
            dst: mapped(d),
            ports,
            ulen,
            tos: (w0 >> 8) as u8,
            df: frag & 0x4000 != 0,
            ipid: w1 as u16,
            csum,
            frame_len,
            unusual,
        };
        finish(ctx, p, ttl)
    } else if ethertype == u16::from_ne_bytes([0x86, 0xDD]) {
        if data + L4_V6 + 8 > end {
            return Err(None);
        }
        let ip = data + ETH;
        // SAFETY: the 40 IPv6 header bytes and the UDP header are inside the packet.
        let (w0, w1, src, dst) =
            unsafe { (rd32(ip), rd32(ip + 4), rd_addr(ip + 8), rd_addr(ip + 24)) };
        if (w0 & 0xff) >> 4 != 6 || (w1 >> 16) & 0xff != 17 {
            return Err(None);
        }
        let plen = host(w1 as u16) as usize;
        let udp = data + L4_V6;
        // SAFETY: as above.
        let (ports, u1) = unsafe { (rd32(udp), rd32(udp + 4)) };
        let ulen = host(u1 as u16) as usize;
        if ulen != plen || L4_V6 + plen > frame_len || src[0] & 0xff == 0xff {
            unusual = true;
        }
        let csum = (u1 >> 16) as u16;
        let (b0, b1) = (w0 as u8, (w0 >> 8) as u8);
        *p = Pkt {
            v6: true,
            src,
            dst,
            ports,
            ulen,
            tos: (b0 << 4) | (b1 >> 4),
            df: false,
            ipid: csum,
            csum,
            frame_len,
            unusual,
        };
        finish(ctx, p, (w1 >> 24) as u8)
    } else {
        Err(None)
    }
}

/// The checks common to both families.
#[inline(always)]
fn finish(ctx: &XdpContext, p: &mut Pkt, ttl: u8) -> Result<(), Option<u32>> {
    if p.ulen < 8 {
        // Nothing sane to classify by.
        return Err(None);
    }
    if p.csum == 0 || ttl <= 1 || p.sport() == 0 {
        // No checksum to update incrementally (userspace relays it); TTL would expire.
        p.unusual = true;
    }
    // A sender on this host with checksum offload (a container behind a veth) leaves
    // only the pseudo-header sum in the field (CHECKSUM_PARTIAL: skb metadata that XDP
    // does not see, which tells the stack to trust the datagram). Updated incrementally
    // it would leave unfinished, and the receiver would drop it: userspace relays it.
    // A complete checksum can have that value too, and in a stream of numbered packets
    // one in a few thousand does: those are told apart by summing the datagram.
    let len_word = u32::from_ne_bytes([0, 17, (p.ulen >> 8) as u8, p.ulen as u8]);
    let pseudo = addr_sum(&p.src, p.v6) + addr_sum(&p.dst, p.v6) + len_word as u64;
    if !p.unusual && fold(pseudo) == p.csum && !checksum_complete(ctx, p.v6, p.ulen, pseudo) {
        p.unusual = true;
    }
    Ok(())
}

/// The longest datagram [`checksum_complete`] sums (longer ones count as partial and
/// pass up).
const MAX_SUMMED: usize = 2048;

/// Whether the datagram's UDP checksum is complete and right: the ones' complement sum
/// of the pseudo-header (`pseudo`), the UDP header and the payload. Asked only of the
/// rare datagram whose checksum field equals the pseudo-header's sum (see [`finish`]),
/// so its loop costs nothing on the common path.
#[inline(never)]
fn checksum_complete(ctx: &XdpContext, v6: bool, ulen: usize, pseudo: u64) -> bool {
    if v6 {
        sum_is_complete::<L4_V6>(ctx, ulen, pseudo)
    } else {
        sum_is_complete::<L4_V4>(ctx, ulen, pseudo)
    }
}

#[inline(always)]
fn sum_is_complete<const L4: usize>(ctx: &XdpContext, ulen: usize, pseudo: u64) -> bool {
    if ulen > MAX_SUMMED {
        return false;
    }
    let mut sum = pseudo;
    let mut i = 0;
    while i < MAX_SUMMED / 4 {
        if 4 * i + 4 > ulen {
            break;
        }
        let Some(w) = packet_ptr::<4>(ctx, L4 + 4 * i) else {
            return false;
        };
        // SAFETY: `packet_ptr` checked the 4 bytes.
        sum += unsafe { rd32(w) } as u64;
        i += 1;
    }
    let rem = ulen & 3;
    if rem != 0 {
        // The last `rem` bytes: the end of the word that ends the datagram (the bytes
        // before them were summed above). That word starts `rem` bytes before a multiple
        // of 4, so for an odd `rem` its bytes sit in the other lane: swapped back.
        let Some(w) = packet_ptr::<4>(ctx, L4 + ulen - 4) else {
            return false;
        };
        // SAFETY: `packet_ptr` checked the 4 bytes.
        let tail = unsafe { rd32(w) } & (u32::MAX << (8 * (4 - rem)));
        let t = fold(tail as u64);
        sum += if rem & 1 == 1 { t.swap_bytes() } else { t } as u64;
    }
    fold(sum) == 0xffff
}
