//! The per-packet path: a publisher's decrypted RTP in, one rewritten and encrypted copy
//! out per subscriber that should get it.
//!
//! Per packet: find its stream (SSRC, learned from the MID/RID header extensions on
//! first sight), undo RTX, record it for NACKs, statistics and TWCC, feed its audio level
//! to the room's speaker detector, then per subscriber let the rewriter decide (layer
//! switches only at keyframes; audio only from the loudest speakers) and build the
//! outgoing packet in the engine's scratch buffer: fixed header with the subscriber's
//! SSRC, payload type, sequence number and timestamp, CSRCs, no header extensions (the
//! publisher's extension ids mean nothing on the subscriber's transport), the payload
//! with the VP8 picture id rewritten.

use super::Engine;
use super::Transmit;
use super::state::{Rewriter, StreamRef, Track, TransportSlot};
use crate::rtp::{KnownExtensions, RtpView};
use crate::sdp::Codec;
use crate::sfu::codec;
use crate::sfu::control::{TrackId, TransportId};
use crate::sfu::rewrite::{Decision, Forward, Incoming, Vp8Ids};
use crate::sfu::rtx;
use crate::sfu::select::{ReceiverLayers, TrackKind};

use std::collections::HashMap;

/// A layer that sent nothing for this long is taken as stopped (the publisher dropped it
/// for bandwidth or CPU): receivers fall back to the next lower layer that is alive.
const LAYER_ALIVE_US: u64 = 1_000_000;

impl Engine {
    pub(super) fn on_rtp(
        &mut self,
        tid: TransportId,
        pkt: &mut [u8],
        now_us: u64,
        tx: &mut dyn Transmit,
    ) {
        self.stats.rtp_in += 1;
        let Some(slot) = self.transports.get_mut(&tid) else {
            return;
        };
        let (ssrc, pt) = match RtpView::parse(pkt) {
            Ok(view) => {
                let ext = slot.spec.extensions.read(&view);
                if let Some(seq) = ext.transport_seq {
                    slot.twcc.record(seq, now_us);
                }
                let ssrc = view.ssrc();
                if !slot.streams.contains_key(&ssrc) {
                    match learn_stream(slot, &mut self.tracks, ssrc, view.payload_type(), &ext) {
                        Some(s) => {
                            if slot.streams.is_empty() {
                                slot.twcc.set_media_ssrc(ssrc);
                            }
                            slot.streams.insert(ssrc, s);
                        }
                        None => {
                            self.stats.rtp_unrouted += 1;
                            return;
                        }
                    }
                }
                (ssrc, view.payload_type())
            }
            Err(_) => {
                self.stats.rtp_unrouted += 1;
                return;
            }
        };
        let Some(&stream) = slot.streams.get(&ssrc) else {
            return;
        };
        let Some(track) = self.tracks.get(&stream.track) else {
            self.stats.rtp_unrouted += 1;
            return;
        };
        let mut len = pkt.len();
        let mut repaired = false;
        if stream.rtx {
            let layer = usize::from(stream.layer);
            let (Some(primary_ssrc), Some(primary_pt)) = (
                track.layers.get(layer).and_then(|l| l.ssrc),
                track.primary_of_rtx(pt),
            ) else {
                self.stats.rtp_unrouted += 1;
                return;
            };
            match rtx::unwrap(pkt, &mut self.aux[..], primary_ssrc, primary_pt) {
                Ok((n, _osn)) if n <= pkt.len() => {
                    pkt[..n].copy_from_slice(&self.aux[..n]);
                    len = n;
                    repaired = true;
                }
                _ => {
                    // Padding-only RTX (bandwidth probing) or malformed: nothing to forward.
                    return;
                }
            }
        }
        self.on_media(stream, &mut pkt[..len], repaired, now_us, tx);
    }

    /// A primary packet (or one recovered from RTX) of one layer of one track.
    fn on_media(
        &mut self,
        stream: StreamRef,
        pkt: &mut [u8],
        repaired: bool,
        now_us: u64,
        tx: &mut dyn Transmit,
    ) {
        let track_id = stream.track;
        let Engine {
            tracks,
            subs,
            transports,
            rooms,
            stats,
            out,
            cfg,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&track_id) else {
            return;
        };
        let Ok(view) = RtpView::parse(pkt) else {
            return;
        };
        let li = usize::from(stream.layer);
        let Some(codec_kind) = track.codec(view.payload_type()) else {
            stats.rtp_unrouted += 1;
            return;
        };
        let (seq, ts) = (view.sequence(), view.timestamp());
        let clock = track.clock_hz;
        let layer_count = track.layers.len();
        let Some(layer) = track.layers.get_mut(li) else {
            return;
        };
        if let Some(history) = &mut layer.history {
            if repaired && history.get(seq).is_some() {
                // Already forwarded: this retransmission repaired nothing for us.
                return;
            }
            history.insert(seq, pkt, now_us);
        }
        layer.last_packet_us = Some(now_us);
        layer.stats.on_packet(seq, ts, now_us, clock);
        if track.spec.video {
            layer.nacks.on_packet(seq, now_us);
        }
        let info = codec::parse(codec_kind.into(), view.payload()).ok();
        let keyframe_start = info.is_some_and(|i| i.is_keyframe_start());
        if keyframe_start {
            layer.keyframes.on_keyframe(now_us);
        }
        let participant = track.spec.participant;
        let room = rooms.get_mut(&track.spec.room);
        let (dominant, audio_on) = match room {
            Some(room) => {
                if !track.spec.video {
                    let level = track_level(&transports.get(&track.spec.transport), &view);
                    if let Some(level) = level {
                        room.speakers.on_level(participant, level, now_us);
                    }
                }
                let on = room.audio_publishers <= cfg.audio_speakers
                    || room.speakers.is_top(participant);
                (room.dominant, on)
            }
            None => (None, true),
        };
        let incoming = Incoming {
            seq,
            ts,
            arrival_us: now_us,
            keyframe_start,
            vp8: info.and_then(|i| i.vp8).map(|v| Vp8Ids {
                picture_id: v.picture_id,
                tl0picidx: v.tl0picidx,
            }),
        };
        let mut alive = [false; 3];
        for (i, l) in track.layers.iter().enumerate().take(3) {
            alive[i] = l
                .last_packet_us
                .is_some_and(|t| now_us.saturating_sub(t) < LAYER_ALIVE_US);
        }
        let kind = if track.spec.screen {
            TrackKind::ScreenShare
        } else {
            TrackKind::Camera
        };
        let layers = u8::try_from(layer_count).unwrap_or(1);
        let mut need_keyframe = false;
        for &sub_tid in &track.subscribers {
            let Some(sub) = subs.get_mut(&(sub_tid, track_id)) else {
                continue;
            };
            let decision = match &mut sub.rewriter {
                Rewriter::Video(r) => {
                    let wanted = ReceiverLayers {
                        max_layer: sub.max_layer,
                    }
                    .target(kind, layers, participant, dominant);
                    let target = (0..=wanted)
                        .rev()
                        .find(|&l| alive[usize::from(l).min(2)])
                        .unwrap_or(wanted);
                    if r.target() != target {
                        r.set_target(target);
                    }
                    r.on_packet(stream.layer, &incoming)
                }
                Rewriter::Audio(r) => {
                    let want = audio_on.then_some(track_id);
                    if r.source() != want {
                        r.set_source(want);
                    }
                    r.on_packet(track_id, &incoming)
                }
            };
            let f = match decision {
                Decision::Forward(f) => f,
                Decision::Drop => continue,
                Decision::DropNeedKeyframe => {
                    need_keyframe = true;
                    continue;
                }
            };
            let Some(out_codec) = sub.payload_type(codec_kind) else {
                stats.no_codec_drops += 1;
                continue;
            };
            let Some(n) = build_forward(
                &view,
                &mut out[..],
                &f,
                sub.spec.ssrc,
                out_codec.payload_type,
                codec_kind,
                !track.spec.video,
            ) else {
                stats.send_errors += 1;
                continue;
            };
            let payload_len = n.saturating_sub(12 + 4 * view.csrc_count());
            if send_protected(transports, sub_tid, &mut out[..], n, now_us, tx, false).is_some() {
                sub.send.on_packet(f.ts, payload_len, now_us);
                stats.rtp_out += 1;
            } else {
                stats.send_errors += 1;
            }
        }
        if need_keyframe {
            request_keyframe(
                tracks,
                transports,
                &mut out[..],
                stats,
                track_id,
                stream.layer,
                now_us,
                tx,
            );
        }
    }

    /// Answers a subscriber's NACK for `out_seq` of the track `track_id` with an RTX
    /// packet built from the cache.
    pub(super) fn retransmit(
        &mut self,
        sub_tid: TransportId,
        track_id: TrackId,
        out_seq: u16,
        now_us: u64,
        tx: &mut dyn Transmit,
    ) {
        let Engine {
            tracks,
            subs,
            transports,
            stats,
            out,
            aux,
            ..
        } = self;
        let (Some(track), Some(sub)) = (tracks.get(&track_id), subs.get_mut(&(sub_tid, track_id)))
        else {
            return;
        };
        let Rewriter::Video(r) = &mut sub.rewriter else {
            return;
        };
        let (Some((layer, seq)), Some(rtx_ssrc)) = (r.original_seq(out_seq), sub.spec.rtx_ssrc)
        else {
            stats.nack_misses += 1;
            return;
        };
        let Some(cached) = track
            .layers
            .get(usize::from(layer))
            .and_then(|l| l.history.as_ref())
            .and_then(|h| h.get(seq))
        else {
            stats.nack_misses += 1;
            return;
        };
        let Ok(view) = RtpView::parse(cached) else {
            return;
        };
        let Some(codec_kind) = track.codec(view.payload_type()) else {
            return;
        };
        let Some(out_codec) = sub
            .spec
            .codecs
            .iter()
            .find(|c| c.codec == codec_kind)
            .copied()
        else {
            return;
        };
        let Some(rtx_pt) = out_codec.rtx_payload_type else {
            return;
        };
        let info = codec::parse(codec_kind.into(), view.payload()).ok();
        let incoming = Incoming {
            seq,
            ts: view.timestamp(),
            arrival_us: now_us,
            keyframe_start: info.is_some_and(|i| i.is_keyframe_start()),
            vp8: info.and_then(|i| i.vp8).map(|v| Vp8Ids {
                picture_id: v.picture_id,
                tl0picidx: v.tl0picidx,
            }),
        };
        // Inside the epoch the rewriter maps a packet to the same numbers every time.
        let Decision::Forward(f) = r.on_packet(layer, &incoming) else {
            stats.nack_misses += 1;
            return;
        };
        if f.seq != out_seq {
            stats.nack_misses += 1;
            return;
        }
        let Some(n) = build_forward(
            &view,
            &mut aux[..],
            &f,
            sub.spec.ssrc,
            out_codec.payload_type,
            codec_kind,
            false,
        ) else {
            return;
        };
        let rtx_seq = sub.rtx_seq;
        sub.rtx_seq = sub.rtx_seq.wrapping_add(1);
        let Ok(m) = rtx::wrap(&aux[..n], &mut out[..], rtx_ssrc, rtx_pt, rtx_seq, out_seq) else {
            stats.send_errors += 1;
            return;
        };
        if send_protected(transports, sub_tid, &mut out[..], m, now_us, tx, false).is_some() {
            stats.rtx_out += 1;
        }
    }
}

/// The RFC 6464 level of an audio packet, read with the publisher transport's ids.
fn track_level(slot: &Option<&TransportSlot>, view: &RtpView<'_>) -> Option<u8> {
    let slot = (*slot)?;
    slot.spec
        .extensions
        .read(view)
        .audio_level
        .map(|l| l.level_dbov)
}

/// Finds the track and layer of an SSRC seen for the first time on a publisher
/// transport: an SSRC the SDP declared, else the MID (and RID / repaired RID) header
/// extensions of this packet.
fn learn_stream(
    slot: &TransportSlot,
    tracks: &mut HashMap<TrackId, Track>,
    ssrc: u32,
    pt: u8,
    ext: &KnownExtensions<'_>,
) -> Option<StreamRef> {
    for &id in &slot.published {
        let Some(t) = tracks.get(&id) else { continue };
        if t.spec.ssrcs.first() == Some(&ssrc) {
            return Some(StreamRef {
                track: id,
                layer: 0,
                rtx: false,
            });
        }
        if t.spec.rtx_pairs.iter().any(|p| p.1 == ssrc) {
            return Some(StreamRef {
                track: id,
                layer: 0,
                rtx: true,
            });
        }
    }
    let mid = ext.mid?;
    let id = *slot
        .published
        .iter()
        .find(|id| tracks.get(id).is_some_and(|t| t.spec.mid == mid))?;
    let track = tracks.get_mut(&id)?;
    let (layer, rtx) = if let Some(rid) = ext.rid {
        (track.layer_of_rid(rid)?, false)
    } else if let Some(rid) = ext.repaired_rid {
        (track.layer_of_rid(rid)?, true)
    } else if track.spec.rids.is_empty() {
        (0, track.primary_of_rtx(pt).is_some())
    } else {
        return None;
    };
    let l = track.layers.get_mut(usize::from(layer))?;
    if rtx {
        l.rtx_ssrc = Some(ssrc);
    } else {
        l.ssrc = Some(ssrc);
    }
    Some(StreamRef {
        track: id,
        layer,
        rtx,
    })
}

/// Writes the packet a subscriber gets into `out`: the header rebuilt with its numbers,
/// no extensions, the payload without padding, the VP8 ids rewritten. Returns its length.
fn build_forward(
    view: &RtpView<'_>,
    out: &mut [u8],
    f: &Forward,
    ssrc: u32,
    pt: u8,
    codec_kind: Codec,
    mark_switch: bool,
) -> Option<usize> {
    let cc = view.csrc_count();
    let header = 12 + 4 * cc;
    let payload = view.payload();
    let n = header + payload.len();
    if n > out.len().saturating_sub(super::SRTP_OVERHEAD) {
        return None;
    }
    let marker = view.marker() || (mark_switch && f.switched);
    out[0] = 0x80 | u8::try_from(cc).ok()?;
    out[1] = (u8::from(marker) << 7) | (pt & 0x7F);
    out[2..4].copy_from_slice(&f.seq.to_be_bytes());
    out[4..8].copy_from_slice(&f.ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    for (i, c) in view.csrcs().enumerate() {
        out[12 + 4 * i..16 + 4 * i].copy_from_slice(&c.to_be_bytes());
    }
    out[header..n].copy_from_slice(payload);
    if codec_kind == Codec::Vp8 && (f.picture_id.is_some() || f.tl0picidx.is_some()) {
        // A payload the parser refused was forwarded as is.
        let _ = codec::rewrite_vp8(&mut out[header..n], f.picture_id, f.tl0picidx);
    }
    Some(n)
}

/// Encrypts `out[..len]` for transport `tid` and sends it to its media address.
pub(super) fn send_protected(
    transports: &mut HashMap<TransportId, TransportSlot>,
    tid: TransportId,
    out: &mut [u8],
    len: usize,
    _now_us: u64,
    tx: &mut dyn Transmit,
    rtcp: bool,
) -> Option<()> {
    let slot = transports.get_mut(&tid)?;
    if !slot.connected {
        return None;
    }
    let dest = slot.dest?;
    let n = if rtcp {
        slot.transport.protect_rtcp(out, len).ok()?
    } else {
        slot.transport.protect_rtp(out, len).ok()?
    };
    tx.send_via(&out[..n], dest, slot.dest_via);
    Some(())
}

/// Asks the publisher of `track_id` for a keyframe on `layer`, unless one was asked for
/// less than the keyframe interval ago (then the limiter sends it when the interval
/// ends, from [`Engine::handle_timeout`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn request_keyframe(
    tracks: &mut HashMap<TrackId, Track>,
    transports: &mut HashMap<TransportId, TransportSlot>,
    out: &mut [u8],
    stats: &mut super::EngineStats,
    track_id: TrackId,
    layer: u8,
    now_us: u64,
    tx: &mut dyn Transmit,
) {
    let Some(track) = tracks.get_mut(&track_id) else {
        return;
    };
    let Some(l) = track.layers.get_mut(usize::from(layer)) else {
        return;
    };
    if !l.keyframes.request(now_us) {
        return;
    }
    send_pli(
        transports,
        out,
        stats,
        track.spec.transport,
        l.ssrc,
        now_us,
        tx,
    );
}

/// Sends a PLI for `media_ssrc` to a publisher transport.
pub(super) fn send_pli(
    transports: &mut HashMap<TransportId, TransportSlot>,
    out: &mut [u8],
    stats: &mut super::EngineStats,
    publisher: TransportId,
    media_ssrc: Option<u32>,
    now_us: u64,
    tx: &mut dyn Transmit,
) {
    let (Some(media_ssrc), Some(slot)) = (media_ssrc, transports.get(&publisher)) else {
        return;
    };
    let Ok(n) = crate::rtp::rtcp::write_pli(out, slot.rtcp_ssrc, media_ssrc) else {
        return;
    };
    if send_protected(transports, publisher, out, n, now_us, tx, true).is_some() {
        stats.keyframe_requests += 1;
        stats.rtcp_out += 1;
    }
}
