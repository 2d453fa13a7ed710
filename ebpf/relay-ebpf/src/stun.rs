//! STUN Binding in the kernel: decides whether a request is one the kernel may answer
//! (contract 1: a Binding request whose only attributes are SOFTWARE and/or a correct
//! FINGERPRINT) and writes the whole answer frame (contract 2) into scratch memory.
//! Anything else is left to userspace.

use relay_common::XDP_MAX_STUN_LEN;

use crate::{crc, csum, parse};

pub const HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Index mask for the message scratch buffer (its size minus one).
pub const MSG_MASK: usize = 1023;
/// Size of the frame scratch buffer.
pub const FRAME_CAP: usize = 128;

/// Per-CPU scratch memory: the request message, then the answer frame.
#[repr(C)]
pub struct Scratch {
    pub msg: [u8; MSG_MASK + 1],
    pub frame: [u8; FRAME_CAP],
}

/// Checks a STUN header read from the packet: a Binding request with a magic cookie and
/// a length that is a multiple of 4 and fills the UDP payload (`stun_len` bytes).
#[inline(always)]
pub fn is_binding_request(h: &[u8; HEADER_LEN], stun_len: usize) -> bool {
    let ty = u16::from_be_bytes([h[0], h[1]]);
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let cookie = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    ty == BINDING_REQUEST
        && cookie == MAGIC_COOKIE
        && len.is_multiple_of(4)
        && HEADER_LEN + len == stun_len
        && stun_len <= XDP_MAX_STUN_LEN
}

#[inline(always)]
fn msg_be16(msg: *const u8, off: usize) -> u16 {
    // SAFETY: both indices are masked into the MSG_MASK + 1 byte buffer.
    unsafe { u16::from_be_bytes([*msg.add(off & MSG_MASK), *msg.add((off + 1) & MSG_MASK)]) }
}

/// Checks the attributes of the message in `msg[..len]` (header already checked): at
/// most one SOFTWARE, then at most one FINGERPRINT that ends the message and is correct.
///
/// # Safety
/// `msg` must point at `MSG_MASK + 1` readable bytes.
#[inline(always)]
pub unsafe fn attributes_ok(msg: *const u8, len: usize) -> bool {
    let mut off = HEADER_LEN;
    if off + 4 <= len && msg_be16(msg, off) == ATTR_SOFTWARE {
        let alen = msg_be16(msg, off + 2) as usize;
        off += 4 + ((alen + 3) & !3);
        if off > len {
            return false;
        }
    }
    if off == len {
        return true;
    }
    if off + 8 != len || msg_be16(msg, off) != ATTR_FINGERPRINT || msg_be16(msg, off + 2) != 4 {
        return false;
    }
    let sent = ((msg_be16(msg, off + 4) as u32) << 16) | msg_be16(msg, off + 6) as u32;
    // SAFETY: forwarded from this function's contract.
    let crc = unsafe { crc::crc32::<{ XDP_MAX_STUN_LEN - 8 }, MSG_MASK>(msg, off) };
    crc ^ FINGERPRINT_XOR == sent
}

/// Addresses and ports of the request, read before the packet is resized.
pub struct Peer {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Request source / destination address (4 bytes used for IPv4).
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    /// Request source / destination port, as on the wire.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
}

#[inline(always)]
fn put(f: *mut u8, off: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        // SAFETY: every caller writes inside the FRAME_CAP-byte frame buffer (constant
        // offsets below FRAME_CAP, checked by the layout constants).
        unsafe { *f.add(off + i) = bytes[i] };
        i += 1;
    }
}

/// Frame length of the answer to an IPv4 / IPv6 request.
pub const ANSWER_V4: usize = parse::L4_V4 + parse::UDP_HLEN + HEADER_LEN + 12 + 8;
pub const ANSWER_V6: usize = parse::L4_V6 + parse::UDP_HLEN + HEADER_LEN + 24 + 8;
const _: () = assert!(ANSWER_V6 <= FRAME_CAP);

/// Writes the answer frame into `f` (FRAME_CAP bytes); returns its length, or `None`
/// if a checksum helper refused.
///
/// # Safety
/// `f` must point at FRAME_CAP writable bytes; `txid` at 12 readable bytes.
#[inline(always)]
pub unsafe fn build_answer(f: *mut u8, v6: bool, peer: &Peer, txid: &[u8; 12]) -> Option<usize> {
    let (l4, ip_hlen, attr_len, total) = if v6 {
        (parse::L4_V6, parse::IPV6_HLEN, 24usize, ANSWER_V6)
    } else {
        (parse::L4_V4, parse::IPV4_HLEN, 12usize, ANSWER_V4)
    };
    let udp_len = total - l4;
    let stun = l4 + parse::UDP_HLEN;
    let msg_len = attr_len + 8;

    // Ethernet: swap MACs, same ethertype.
    put(f, 0, &peer.src_mac);
    put(f, 6, &peer.dst_mac);
    put(f, 12, if v6 { &[0x86, 0xDD] } else { &[0x08, 0x00] });

    // IP.
    let ip = parse::ETH_HLEN;
    if v6 {
        put(f, ip, &[0x60, 0, 0, 0]);
        put(f, ip + 4, &(udp_len as u16).to_be_bytes());
        put(f, ip + 6, &[17, 64]);
        put(f, ip + 8, &peer.dst_ip);
        put(f, ip + 24, &peer.src_ip);
    } else {
        put(f, ip, &[0x45, 0]);
        put(f, ip + 2, &((total - ip) as u16).to_be_bytes());
        put(f, ip + 4, &[0, 0, 0x40, 0, 64, 17, 0, 0]);
        put(
            f,
            ip + 12,
            &[
                peer.dst_ip[0],
                peer.dst_ip[1],
                peer.dst_ip[2],
                peer.dst_ip[3],
            ],
        );
        put(
            f,
            ip + 16,
            &[
                peer.src_ip[0],
                peer.src_ip[1],
                peer.src_ip[2],
                peer.src_ip[3],
            ],
        );
    }

    // UDP (checksum filled in last).
    put(f, l4, &peer.dst_port);
    put(f, l4 + 2, &peer.src_port);
    put(f, l4 + 4, &(udp_len as u16).to_be_bytes());
    put(f, l4 + 6, &[0, 0]);

    // STUN header.
    put(f, stun, &BINDING_SUCCESS.to_be_bytes());
    put(f, stun + 2, &(msg_len as u16).to_be_bytes());
    put(f, stun + 4, &MAGIC_COOKIE.to_be_bytes());
    put(f, stun + 8, txid);

    // XOR-MAPPED-ADDRESS of the request's source.
    let a = stun + HEADER_LEN;
    put(f, a, &ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    put(f, a + 2, &((attr_len - 4) as u16).to_be_bytes());
    put(f, a + 4, &[0, if v6 { 0x02 } else { 0x01 }]);
    put(
        f,
        a + 6,
        &[peer.src_port[0] ^ 0x21, peer.src_port[1] ^ 0x12],
    );
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut i = 0;
    while i < 16 {
        if v6 || i < 4 {
            let key = if i < 4 { cookie[i] } else { txid[i - 4] };
            put(f, a + 8 + i, &[peer.src_ip[i] ^ key]);
        }
        i += 1;
    }

    // FINGERPRINT over everything before it.
    let fp = a + attr_len;
    put(f, fp, &ATTR_FINGERPRINT.to_be_bytes());
    put(f, fp + 2, &[0, 4]);
    // SAFETY: `f + stun` has at least 64 readable bytes (stun + 64 <= FRAME_CAP) and the
    // CRC reads at most `fp - stun <= 44` of them, masked by 63.
    let crc = unsafe { crc::crc32::<44, 63>(f.add(stun), fp - stun) } ^ FINGERPRINT_XOR;
    put(f, fp + 4, &crc.to_be_bytes());

    // Checksums.
    if !v6 {
        // SAFETY: the 20 IP header bytes are inside the frame buffer.
        let sum = unsafe { csum::add(f.add(ip), parse::IPV4_HLEN as u32, 0) }?;
        put(f, ip + 10, &(!csum::fold(sum)).to_ne_bytes());
    }
    let addrs = if v6 { ip + 8 } else { ip + 12 };
    // SAFETY: the UDP segment and the addresses are inside the frame buffer.
    let sum = unsafe { csum::add(f.add(l4), udp_len as u32, 0) }?;
    // SAFETY: as above.
    let sum = unsafe { csum::add(f.add(addrs), (ip_hlen - (addrs - ip)) as u32, sum) }?;
    let pseudo = [0u8, 17, (udp_len >> 8) as u8, udp_len as u8];
    // SAFETY: `pseudo` is a 4-byte stack array.
    let sum = unsafe { csum::add(pseudo.as_ptr(), 4, sum) }?;
    put(f, l4 + 6, &csum::finish(sum));
    Some(total)
}
