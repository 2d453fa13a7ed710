//! RTCP, terminated per hop. From subscribers: NACK (answered with RTX from the cache),
//! PLI/FIR (a keyframe request to the publisher of the layer the subscriber is on,
//! rate-limited per layer), receiver reports (round-trip time). From publishers: sender
//! reports (for our receiver reports' LSR/DLSR). Towards publishers, on the engine's
//! timer: NACKs for their losses, deferred keyframe requests, TWCC feedback, and receiver
//! reports; towards subscribers: sender reports.

use super::forward::{send_pli, send_protected};
use super::state::Rewriter;
use super::{Engine, Transmit};
use crate::rtp::rtcp::{self, ReportBlock, RtcpPacket};
use crate::sfu::control::{TrackId, TransportId, TransportRole};
use crate::sfu::reports::{ntp_middle32, system_time_to_ntp};

/// Most report blocks in one RR (RFC 3550 allows 31).
const MAX_BLOCKS: usize = 31;

impl Engine {
    pub(super) fn on_rtcp(
        &mut self,
        tid: TransportId,
        pkt: &[u8],
        now_us: u64,
        tx: &mut dyn Transmit,
    ) {
        self.stats.rtcp_in += 1;
        let Some(role) = self.transports.get(&tid).map(|s| s.spec.role) else {
            return;
        };
        for p in rtcp::compound(pkt) {
            let Ok(p) = p else { break };
            match (role, p) {
                (TransportRole::Subscriber, RtcpPacket::Nack(n)) => {
                    let Some(track) = self.out_track(tid, n.media_ssrc()) else {
                        continue;
                    };
                    for seq in n.lost() {
                        self.retransmit(tid, track, seq, now_us, tx);
                    }
                }
                (TransportRole::Subscriber, RtcpPacket::Pli(p)) => {
                    if let Some(track) = self.out_track(tid, p.media_ssrc()) {
                        self.keyframe_for(tid, track, now_us, tx);
                    }
                }
                (TransportRole::Subscriber, RtcpPacket::Fir(f)) => {
                    let ssrcs: [Option<u32>; 4] = {
                        let mut a = [None; 4];
                        for (slot, e) in a.iter_mut().zip(f.entries()) {
                            *slot = Some(e.ssrc);
                        }
                        a
                    };
                    for ssrc in ssrcs.into_iter().flatten() {
                        if let Some(track) = self.out_track(tid, ssrc) {
                            self.keyframe_for(tid, track, now_us, tx);
                        }
                    }
                }
                (TransportRole::Subscriber, RtcpPacket::ReceiverReport(rr)) => {
                    for block in rr.report_blocks() {
                        self.on_report_block(tid, &block, now_us);
                    }
                }
                (TransportRole::Publisher, RtcpPacket::SenderReport(sr)) => {
                    let ssrc = sr.ssrc();
                    let info = sr.sender_info();
                    let Some(stream) = self
                        .transports
                        .get(&tid)
                        .and_then(|s| s.streams.get(&ssrc).copied())
                    else {
                        continue;
                    };
                    if let Some(layer) = self
                        .tracks
                        .get_mut(&stream.track)
                        .and_then(|t| t.layers.get_mut(usize::from(stream.layer)))
                    {
                        layer.stats.on_sr(info.ntp_timestamp, now_us);
                    }
                }
                _ => {}
            }
        }
    }

    /// The track a subscriber's RTCP names by our outgoing SSRC.
    fn out_track(&self, tid: TransportId, ssrc: u32) -> Option<TrackId> {
        self.transports.get(&tid)?.out_ssrcs.get(&ssrc).copied()
    }

    fn on_report_block(&mut self, tid: TransportId, block: &ReportBlock, now_us: u64) {
        let Some(track) = self.out_track(tid, block.ssrc) else {
            return;
        };
        let now_ntp = ntp_middle32(system_time_to_ntp(std::time::SystemTime::now()));
        let _ = now_us;
        if let Some(sub) = self.subs.get_mut(&(tid, track)) {
            let _ = sub.send.on_report_block(block, now_ntp);
        }
    }

    /// A subscriber lost its picture: ask the publisher for a keyframe on the layer the
    /// subscriber receives (or waits for).
    fn keyframe_for(
        &mut self,
        tid: TransportId,
        track: TrackId,
        now_us: u64,
        tx: &mut dyn Transmit,
    ) {
        let layer = match self.subs.get(&(tid, track)).map(|s| &s.rewriter) {
            Some(Rewriter::Video(r)) => r.current().unwrap_or(r.target()),
            _ => return,
        };
        let Engine {
            tracks,
            transports,
            out,
            stats,
            ..
        } = self;
        super::forward::request_keyframe(
            tracks,
            transports,
            &mut out[..],
            stats,
            track,
            layer,
            now_us,
            tx,
        );
    }

    /// NACKs for publishers' losses, keyframe requests the limiter deferred, TWCC
    /// feedback.
    pub(super) fn publisher_feedback(&mut self, now_us: u64, tx: &mut dyn Transmit) {
        let Engine {
            tracks,
            transports,
            out,
            stats,
            ..
        } = self;
        for track in tracks.values_mut() {
            let publisher = track.spec.transport;
            for layer in &mut track.layers {
                if layer.keyframes.poll_timeout().is_some_and(|t| t <= now_us)
                    && layer.keyframes.handle_timeout(now_us)
                {
                    send_pli(
                        transports,
                        &mut out[..],
                        stats,
                        publisher,
                        layer.ssrc,
                        now_us,
                        tx,
                    );
                }
                let (Some(media_ssrc), Some(slot)) = (layer.ssrc, transports.get_mut(&publisher))
                else {
                    continue;
                };
                let n = layer.nacks.poll_nacks(now_us, &mut slot.nack_scratch);
                if n == 0 {
                    continue;
                }
                let Ok(len) = rtcp::write_nack(
                    &mut out[..],
                    slot.rtcp_ssrc,
                    media_ssrc,
                    &slot.nack_scratch[..n],
                ) else {
                    continue;
                };
                if send_protected(transports, publisher, &mut out[..], len, now_us, tx, true)
                    .is_some()
                {
                    stats.nacks_out += 1;
                    stats.rtcp_out += 1;
                }
            }
        }
        let ids: Vec<TransportId> = transports
            .iter()
            .filter(|(_, s)| s.spec.role == TransportRole::Publisher && s.connected)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // A few messages at most per tick; the recorder keeps the rest for the next.
            for _ in 0..4 {
                let Some(slot) = transports.get_mut(&id) else {
                    break;
                };
                let len = match slot.twcc.write_feedback(&mut out[..1200]) {
                    Ok(Some(len)) => len,
                    _ => break,
                };
                if send_protected(transports, id, &mut out[..], len, now_us, tx, true).is_some() {
                    stats.rtcp_out += 1;
                    stats.twcc_feedback_out += 1;
                }
            }
        }
    }

    /// Receiver reports to publishers, sender reports to subscribers.
    pub(super) fn reports(&mut self, now_us: u64, tx: &mut dyn Transmit) {
        let ntp = system_time_to_ntp(std::time::SystemTime::now());
        let Engine {
            tracks,
            subs,
            transports,
            out,
            stats,
            ..
        } = self;
        let ids: Vec<TransportId> = transports
            .iter()
            .filter(|(_, s)| s.connected)
            .map(|(id, _)| *id)
            .collect();
        let mut blocks = [ReportBlock::default(); MAX_BLOCKS];
        for id in ids {
            let Some(slot) = transports.get(&id) else {
                continue;
            };
            let rtcp_ssrc = slot.rtcp_ssrc;
            let len = match slot.spec.role {
                TransportRole::Publisher => {
                    let mut n = 0;
                    for id in &slot.published {
                        let Some(track) = tracks.get_mut(id) else {
                            continue;
                        };
                        for layer in &mut track.layers {
                            if let Some(ssrc) = layer.ssrc
                                && n < MAX_BLOCKS
                            {
                                blocks[n] = layer.stats.report_block(ssrc, now_us);
                                n += 1;
                            }
                        }
                    }
                    rtcp::write_rr(&mut out[..], rtcp_ssrc, &blocks[..n]).ok()
                }
                TransportRole::Subscriber => {
                    let mut used = 0;
                    for (&ssrc, &track) in &slot.out_ssrcs {
                        let Some(sub) = subs.get(&(id, track)) else {
                            continue;
                        };
                        if sub.spec.ssrc != ssrc || sub.send.packet_count() == 0 {
                            continue;
                        }
                        let info = sub.send.sender_report(now_us, ntp);
                        let Ok(n) = rtcp::write_sr(&mut out[used..1200], ssrc, &info, &[]) else {
                            break;
                        };
                        used += n;
                        if used > 1000 {
                            break;
                        }
                    }
                    (used > 0).then_some(used)
                }
            };
            let Some(len) = len else { continue };
            if send_protected(transports, id, &mut out[..], len, now_us, tx, true).is_some() {
                stats.rtcp_out += 1;
            }
        }
    }
}
