//! Send indications from clients. The attributes may come in any order (coturn's
//! turnutils_uclient sends DATA, XOR-PEER-ADDRESS, FINGERPRINT); the kernel relays a
//! message made of exactly one XOR-PEER-ADDRESS, one DATA, at most one DONT-FRAGMENT
//! and an optional FINGERPRINT (last, verified here: CRC-32 over the message before it).
//! Anything else (other or repeated attributes, bad lengths, a wrong FINGERPRINT, a
//! message longer than [`MAX_MSG`]) passes up, where userspace applies the full rules.

use aya_ebpf::programs::XdpContext;
use relay_common::{
    counter::{TURN_NO_RULE_PASSED, TURN_SEND_TO_PEER, TURN_UNHANDLED_PASSED},
    turn::{AllocKey, PeerKey, TurnSettings},
};

use super::{
    Out, TURN_ALLOCS, TURN_PEERS, Work, live,
    pkt::{L4_V4, L4_V6, Pkt},
    words::{Addr, MAGIC_W, host, is_mapped, mapped, packet_ptr, rd_addr, rd16, rd32, same},
};
use crate::crc;

/// Attributes looked at before giving up (the accepted shape has at most four).
const MAX_ATTRS: usize = 4;
/// Longest message relayed in the kernel (the FINGERPRINT loop runs over at most this
/// many bytes, in words).
pub const MAX_MSG: usize = 1504;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Fills `o` for a Send indication the kernel relays and returns 0; else returns the
/// counter to pass the frame up under.
#[inline(never)]
pub fn from_send(ctx: &XdpContext, work: *mut Work, settings: &TurnSettings, now: u64) -> u32 {
    // SAFETY: this CPU's scratch entry (see `relay_packed`); disjoint fields.
    let (p, o, key) = unsafe { (&(*work).pkt, &mut (*work).out, &mut (*work).key) };
    let r = if p.v6 {
        parse::<L4_V6>(ctx, p, o, settings, now, key)
    } else {
        parse::<L4_V4>(ctx, p, o, settings, now, key)
    };
    match r {
        Ok(()) => 0,
        Err(c) => c,
    }
}

/// What the attribute walk found (offsets from the start of the message).
struct Found {
    peer: Addr,
    /// The peer port, memory order.
    peer_port: u16,
    peer_v6: bool,
    data_at: usize,
    data_len: usize,
    dont_fragment: bool,
    /// Offset of the FINGERPRINT attribute, 0 if none.
    fp_at: usize,
    fp: u32,
    /// Sum of every word of the message except DATA's value and padding.
    sum: u64,
}

#[inline(always)]
fn parse<const L4: usize>(
    ctx: &XdpContext,
    p: &Pkt,
    o: &mut Out,
    settings: &TurnSettings,
    now: u64,
    key: &mut [u32; 10],
) -> Result<(), u32> {
    const UNHANDLED: u32 = TURN_UNHANDLED_PASSED;
    let payload = p.ulen - 8;
    if payload < 36 || payload > MAX_MSG {
        return Err(UNHANDLED);
    }
    let m = L4 + 8;
    let hdr = packet_ptr::<20>(ctx, m).ok_or(UNHANDLED)?;
    // SAFETY: `packet_ptr` checked the 20 header bytes.
    let (w0, cookie, t0, t1, t2) = unsafe {
        (
            rd32(hdr),
            rd32(hdr + 4),
            rd32(hdr + 8),
            rd32(hdr + 12),
            rd32(hdr + 16),
        )
    };
    if cookie != MAGIC_W || 20 + host((w0 >> 16) as u16) as usize != payload {
        return Err(UNHANDLED);
    }
    let mut f = Found {
        peer: [0; 4],
        peer_port: 0,
        peer_v6: false,
        data_at: 0,
        data_len: 0,
        dont_fragment: false,
        fp_at: 0,
        fp: 0,
        sum: w0 as u64 + cookie as u64 + t0 as u64 + t1 as u64 + t2 as u64,
    };
    let (mut have_peer, mut have_data) = (false, false);
    let mut off = 20;
    let mut i = 0;
    while i < MAX_ATTRS && off < payload {
        let a = packet_ptr::<4>(ctx, m + off).ok_or(UNHANDLED)?;
        // SAFETY: `packet_ptr` checked the 4 bytes.
        let h = unsafe { rd32(a) };
        let len = host((h >> 16) as u16) as usize;
        let next = off + 4 + ((len + 3) & !3);
        if next > payload {
            return Err(UNHANDLED);
        }
        let ty = host(h as u16);
        if ty == 0x0013 && !have_data {
            have_data = true;
            f.data_at = off + 4;
            f.data_len = len;
            f.sum += h as u64;
        } else if ty == 0x0012 && !have_peer && (len == 8 || len == 20) {
            have_peer = true;
            let v = packet_ptr::<8>(ctx, m + off + 4).ok_or(UNHANDLED)?;
            // SAFETY: `packet_ptr` checked the 8 bytes.
            let (v0, v1) = unsafe { (rd32(v), rd32(v + 4)) };
            let family = (v0 >> 8) & 0xff;
            f.peer_port = ((v0 >> 16) as u16) ^ (MAGIC_W as u16);
            f.sum += h as u64 + v0 as u64 + v1 as u64;
            if len == 8 && family == 1 && v0 & 0xff == 0 {
                f.peer = mapped(v1 ^ MAGIC_W);
            } else if len == 20 && family == 2 && v0 & 0xff == 0 {
                let v = packet_ptr::<20>(ctx, m + off + 4).ok_or(UNHANDLED)?;
                // SAFETY: `packet_ptr` checked the 20 bytes.
                let (v2, v3, v4) = unsafe { (rd32(v + 8), rd32(v + 12), rd32(v + 16)) };
                f.sum += v2 as u64 + v3 as u64 + v4 as u64;
                f.peer = [v1 ^ MAGIC_W, v2 ^ t0, v3 ^ t1, v4 ^ t2];
                f.peer_v6 = true;
            } else {
                return Err(UNHANDLED);
            }
        } else if ty == 0x001A && len == 0 && !f.dont_fragment {
            f.dont_fragment = true;
            f.sum += h as u64;
        } else if ty == 0x8028 && len == 4 && next == payload {
            let v = packet_ptr::<4>(ctx, m + off + 4).ok_or(UNHANDLED)?;
            // SAFETY: `packet_ptr` checked the 4 bytes.
            let fp = unsafe { rd32(v) };
            f.fp_at = off;
            f.fp = fp;
            f.sum += h as u64 + fp as u64;
        } else {
            return Err(UNHANDLED);
        }
        off = next;
        i += 1;
    }
    if off != payload || !have_peer || !have_data {
        return Err(UNHANDLED);
    }
    if f.fp_at != 0 && !fingerprint_ok::<L4>(ctx, f.fp_at, f.fp) {
        return Err(UNHANDLED);
    }
    relay_to::<L4>(p, o, settings, now, &f, key)
}

/// Whether the FINGERPRINT value `fp` matches the CRC-32 of the message's first `len`
/// bytes (a multiple of 4, below [`MAX_MSG`]).
#[inline(always)]
fn fingerprint_ok<const L4: usize>(ctx: &XdpContext, len: usize, fp: u32) -> bool {
    let mut c = 0xFFFF_FFFFu32;
    let mut i = 0;
    while i < MAX_MSG / 4 {
        if 4 * i >= len {
            break;
        }
        let Some(w) = packet_ptr::<4>(ctx, L4 + 8 + 4 * i) else {
            return false;
        };
        // SAFETY: `packet_ptr` checked the 4 bytes.
        c = crc::step(c, unsafe { rd32(w) });
        i += 1;
    }
    (!c ^ FINGERPRINT_XOR).to_be_bytes() == fp.to_ne_bytes()
}

/// The rules: the client's allocation, the peer's permission; fills `o`.
#[inline(always)]
fn relay_to<const L4: usize>(
    p: &Pkt,
    o: &mut Out,
    settings: &TurnSettings,
    now: u64,
    f: &Found,
    key: &mut [u32; 10],
) -> Result<(), u32> {
    *key = [
        p.src[0], p.src[1], p.src[2], p.src[3], p.dst[0], p.dst[1], p.dst[2], p.dst[3], p.ports, 0,
    ];
    // SAFETY: `key` starts with the size and layout of an AllocKey (client address, server
    // address, client port, server port).
    let alloc = unsafe { TURN_ALLOCS.get_ptr(&*(key.as_ptr() as *const AllocKey)) }
        .ok_or(TURN_NO_RULE_PASSED)?;
    let a = alloc as usize;
    // SAFETY: `alloc` points at a live AllocRule value (40 bytes, 8-aligned).
    let (expires, relay_addr, relay_port, stats_idx, alloc_idx) = unsafe {
        (
            (*alloc).expires_ns,
            rd_addr(a + 8),
            rd16(a + 24),
            (*alloc).stats_idx,
            (*alloc).alloc_idx,
        )
    };
    if !live(expires, now) {
        return Err(TURN_NO_RULE_PASSED);
    }
    if f.peer_v6 == is_mapped(&relay_addr) {
        // The peer's family is not the relayed address's: userspace answers that.
        return Err(TURN_UNHANDLED_PASSED);
    }
    let pp = host(f.peer_port);
    let peer = &f.peer;
    if (pp < settings.relay_port_min || pp > settings.relay_port_max)
        && (same(peer, &relay_addr) || same(peer, &p.dst))
    {
        // One of the relay's own services: userspace refuses it.
        return Err(TURN_UNHANDLED_PASSED);
    }
    *key = [
        peer[0],
        peer[1],
        peer[2],
        peer[3],
        relay_addr[0],
        relay_addr[1],
        relay_addr[2],
        relay_addr[3],
        (relay_port as u32) << 16,
        0,
    ];
    // SAFETY: `key` starts with the size and layout of a PeerKey; the permission entry has peer
    // port zero.
    let perm = unsafe { TURN_PEERS.get_ptr(&*(key.as_ptr() as *const PeerKey)) }
        .ok_or(TURN_NO_RULE_PASSED)?;
    // SAFETY: `perm` points at a live PeerRule value.
    if !live(unsafe { (*perm).expires_ns }, now) {
        return Err(TURN_NO_RULE_PASSED);
    }
    *o = Out {
        v6: f.peer_v6,
        df: f.dont_fragment,
        channel: 0,
        counter: TURN_SEND_TO_PEER,
        src: relay_addr,
        dst: *peer,
        ports: relay_port as u32 | (f.peer_port as u32) << 16,
        stats_idx,
        alloc_idx,
        extra: 0,
        prefix_sum: f.sum,
        payload_off: L4 + 8 + f.data_at,
        in_pad: ((f.data_len + 3) & !3) - f.data_len,
        payload_len: f.data_len,
        out_pad: 0,
    };
    Ok(())
}
