//! Starting and stopping the SFU: its DTLS certificate, the media workers (one thread
//! and one port each, rooms sharded over them: `sfu::shards`), the signaling server, the
//! command router and the channels between them; their counters for `relay stats`.
//!
//! Kept apart from the TURN start-up so the daemon's main function stays a list of
//! services, and so a configuration mistake here (a busy port, an unreadable secret file)
//! fails start-up with a message that names the `[sfu]` key to change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::dtls::Certificate;
use crate::ice::Transport as IceTransport;
use crate::sdp::{CandidateTransport, LocalCandidate};
use crate::sfu::engine::EngineConfig;
use crate::sfu::runtime::{RuntimeConfig, SfuRuntime};
use crate::sfu::shards::RouterThread;
use crate::signaling::rooms::{Rooms, RoomsConfig};
use crate::signaling::server::{ServerConfig, SignalingServer};

/// Why the SFU could not start.
#[derive(Debug, thiserror::Error)]
pub enum SfuSetupError {
    /// The DTLS certificate could not be made.
    #[error("cannot generate the SFU's DTLS certificate: {0}")]
    Certificate(String),
    /// The token secret file could not be read.
    #[error("cannot read sfu.token_secret_file {path}: {source}")]
    SecretFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A socket could not be bound.
    #[error("{0}")]
    Bind(String),
}

/// The running SFU.
pub struct SfuService {
    /// The media workers; worker i owns the rooms `shards::worker_of` gives it.
    runtimes: Vec<SfuRuntime>,
    router: Option<RouterThread>,
    server: Option<SignalingServer>,
}

/// The signaling server's and the media engine's counters, flattened for the stats
/// answer (fixed keys only).
pub type SfuStats = BTreeMap<String, u64>;

impl SfuService {
    /// Starts the SFU if `[sfu]` enables it.
    pub fn start(config: &Config) -> Result<Option<SfuService>, SfuSetupError> {
        let s = &config.sfu;
        if !s.enabled {
            return Ok(None);
        }
        let cert =
            Certificate::generate().map_err(|e| SfuSetupError::Certificate(e.to_string()))?;
        let mut secrets: Vec<Vec<u8>> = s
            .token_secrets
            .iter()
            .map(|x| x.expose().as_bytes().to_vec())
            .collect();
        if let Some(path) = &s.token_secret_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| SfuSetupError::SecretFile {
                    path: path.display().to_string(),
                    source,
                })?;
            secrets.push(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
        }
        if secrets.is_empty() && s.demo_tokens {
            // Demo only: a secret nobody else knows, good until the daemon stops.
            let mut random = [0u8; 32];
            openssl::rand::rand_bytes(&mut random)
                .map_err(|e| SfuSetupError::Certificate(e.to_string()))?;
            secrets.push(random.to_vec());
        }
        if secrets.is_empty() {
            tracing::warn!(
                "sfu.token_secrets is empty and demo tokens are off: every join will be refused; \
                 add a secret (and give your application server the same one)"
            );
        }
        let fingerprint = cert.fingerprint();
        let cert = Arc::new(cert);
        let (ev_tx, ev_rx) = crossbeam_channel::bounded(4096);
        // The media workers first: with port 0 their candidates are the ports they got.
        // The cores this process may run on (as the dataplane pins its workers): worker i
        // is pinned to the (i % count)-th of them.
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut runtimes = Vec::with_capacity(s.workers);
        let mut worker_tx = Vec::with_capacity(s.workers);
        for i in 0..s.workers.max(1) {
            // Unbounded like the signaling channel: the router never blocks on a worker.
            let (tx, rx) = crossbeam_channel::unbounded();
            let runtime = SfuRuntime::start(
                RuntimeConfig {
                    listen: s.worker_listen(i),
                    engine: EngineConfig {
                        audio_speakers: s.audio_speakers,
                        ..EngineConfig::default()
                    },
                    backend: config.backend,
                    core: (!cores.is_empty()).then(|| cores[i % cores.len()].id),
                    tcp: s.tcp,
                },
                cert.clone(),
                rx,
                ev_tx.clone(),
            )
            .map_err(|e| SfuSetupError::Bind(format!("SFU media worker {i} (sfu.workers): {e}")))?;
            runtimes.push(runtime);
            worker_tx.push(tx);
        }
        drop(ev_tx);
        let candidates = runtimes
            .iter()
            .map(|rt| {
                // UDP first, then passive TCP on the same port (the runtime bound its TCP
                // listener there; with `tcp` off there is none).
                s.host_candidates_for(rt.local_addr())
                    .into_iter()
                    .map(|(addr, transport)| LocalCandidate {
                        addr,
                        transport: match transport {
                            IceTransport::Udp => CandidateTransport::Udp,
                            IceTransport::Tcp => CandidateTransport::TcpPassive,
                        },
                    })
                    .collect()
            })
            .collect();
        let (stun_urls, turn_urls) = ice_urls(config);
        let turn_secret = config.turn.secrets.first().map(|x| x.expose().to_owned());
        let rooms = Rooms::new(RoomsConfig {
            secrets: secrets.clone(),
            candidates,
            fingerprint,
            stun_urls,
            turn_urls: if turn_secret.is_some() {
                turn_urls
            } else {
                Vec::new()
            },
            turn_secret,
            turn_ttl_secs: s.turn_credential_ttl,
            create_rooms: s.create_rooms,
            rooms: s.rooms.clone(),
            max_participants: s.max_participants,
        });
        // Unbounded: the signaling server sends commands while holding its room lock (to
        // keep their order), so a full channel would stall every signaling connection;
        // commands are small and signaling is rate-limited per connection.
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let router = RouterThread::start(cmd_rx, worker_tx).map_err(|e| {
            SfuSetupError::Bind(format!("cannot start the SFU command router: {e}"))
        })?;
        let server = SignalingServer::start(
            ServerConfig {
                listen: s.signaling_listen,
                max_connections: 1024,
                demo_tokens: s.demo_tokens.then(|| secrets[0].clone()),
                messages_per_sec: s.messages_per_sec,
                idle_timeout: Duration::from_secs(60),
            },
            rooms,
            cmd_tx,
            ev_rx,
        )
        .map_err(|e| {
            SfuSetupError::Bind(format!(
                "cannot start the signaling server on {} (sfu.signaling_listen): {e}",
                s.signaling_listen
            ))
        })?;
        let media: Vec<SocketAddr> = runtimes.iter().map(SfuRuntime::local_addr).collect();
        tracing::info!(
            signaling = %server.local_addr(),
            ?media,
            "SFU ready: demo page at http://{}/",
            server.local_addr()
        );
        Ok(Some(SfuService {
            runtimes,
            router: Some(router),
            server: Some(server),
        }))
    }

    /// The signaling server's address (HTTP + WebSocket).
    pub fn signaling_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(SignalingServer::local_addr)
    }

    /// The media workers' socket addresses, by worker.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.runtimes.iter().map(SfuRuntime::local_addr).collect()
    }

    /// Counters for `relay stats`.
    pub fn stats(&self) -> SfuStats {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        m.insert("media_workers".into(), self.runtimes.len() as u64);
        if let Some(r) = &self.router {
            m.insert("commands_unroutable".into(), r.dropped());
        }
        // Every worker's counters, summed.
        for rt in &self.runtimes {
            let (e, send_errors) = rt.stats();
            for (k, v) in [
                ("datagrams_in", e.datagrams_in),
                ("unknown_source", e.unknown_source),
                ("rtp_in", e.rtp_in),
                ("rtp_unrouted", e.rtp_unrouted),
                ("rtp_out", e.rtp_out),
                ("rtx_out", e.rtx_out),
                ("nack_misses", e.nack_misses),
                ("rtcp_in", e.rtcp_in),
                ("rtcp_out", e.rtcp_out),
                ("keyframe_requests", e.keyframe_requests),
                ("nacks_out", e.nacks_out),
                ("send_errors", e.send_errors + send_errors),
                ("bad_commands", e.bad_commands),
                ("twcc_feedback_out", e.twcc_feedback_out),
                ("srtp_failures", e.srtp_failures),
                ("transport_drops", e.transport_drops),
                ("no_codec_drops", e.no_codec_drops),
            ] {
                *m.entry(k.to_owned()).or_default() += v;
            }
            let io = rt.io_stats();
            // The part of send_errors the kernel refused (the rest: the engine could not
            // build or protect the packet, or the receiver's transport was not up).
            *m.entry("media_send_errors".into()).or_default() += io.send_errors;
            *m.entry("send_slot_full".into()).or_default() += io.send_slot_full;
            *m.entry("media_recv_drops".into()).or_default() += io.recv_drops;
            for (k, v) in [
                ("tcp_connections", io.tcp_connections),
                ("tcp_refused", io.tcp_refused),
                ("tcp_frame_errors", io.tcp_frame_errors),
                ("tcp_send_drops", io.tcp_send_drops),
                ("tcp_idle_closed", io.tcp_idle_closed),
            ] {
                *m.entry(k.to_owned()).or_default() += v;
            }
        }
        // 1 when the media workers run on io_uring (they all follow [dataplane] backend).
        let uring = !self.runtimes.is_empty()
            && self
                .runtimes
                .iter()
                .all(|rt| rt.backend() == crate::sfu::runtime::MediaBackend::IoUring);
        m.insert("media_backend_io_uring".into(), u64::from(uring));
        if let Some(server) = &self.server {
            let s = server.stats();
            m.insert("signaling_connections_open".into(), s.connections_open);
            m.insert("signaling_connections_total".into(), s.connections_total);
            m.insert("signaling_messages_in".into(), s.messages_in);
            m.insert("signaling_messages_out".into(), s.messages_out);
            m.insert("signaling_rejected".into(), s.rejected);
            for (code, n) in s.errors {
                m.insert(format!("signaling_error_{}", code.as_str()), n);
            }
            m.insert("rooms".into(), s.rooms.rooms as u64);
            m.insert("participants".into(), s.rooms.participants as u64);
            m.insert("tracks".into(), s.rooms.tracks as u64);
        }
        m
    }

    /// Stops the signaling server first (no new commands), then the router, then the
    /// media workers.
    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        if let Some(r) = self.router.take() {
            r.shutdown();
        }
        for r in self.runtimes.drain(..) {
            r.shutdown();
        }
    }
}

/// STUN and TURN URLs for P2P participants, from the UDP listen addresses (and the TCP /
/// TLS TURN listeners).
fn ice_urls(config: &Config) -> (Vec<String>, Vec<String>) {
    let host = |a: &SocketAddr| match a {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    };
    let usable = |a: &&SocketAddr| !a.ip().is_unspecified();
    let stun = config
        .listen
        .iter()
        .filter(usable)
        .map(|a| format!("stun:{}", host(a)))
        .collect();
    let mut turn = Vec::new();
    if config.turn.enabled {
        turn.extend(
            config
                .listen
                .iter()
                .filter(usable)
                .map(|a| format!("turn:{}?transport=udp", host(a))),
        );
        turn.extend(
            config
                .turn
                .listen_tcp
                .iter()
                .filter(usable)
                .map(|a| format!("turn:{}?transport=tcp", host(a))),
        );
        turn.extend(
            config
                .turn
                .listen_tls
                .iter()
                .filter(usable)
                .map(|a| format!("turns:{}?transport=tcp", host(a))),
        );
    }
    (stun, turn)
}
