// The relay's demo client: joins a room over the signaling WebSocket (docs/SIGNALING.md)
// and either publishes camera + microphone (simulcast) to the SFU and shows everyone
// else, or, in P2P mode, calls the one other participant directly (falling back to the
// relay's TURN) with a DataChannel for files.
//
// Everything the page does is also reachable as `window.demo` so the browser tests can
// drive it and read its state (tests/browser/sfu_room.mjs).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SIMULCAST = [
    { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ];
  const CHUNK = 16 * 1024;

  const state = {
    ws: null,
    mode: null,
    me: null,
    room: null,
    participants: new Map(), // id -> identity
    tracks: new Map(), // track id -> TrackInfo (the others' tracks)
    ownTracks: new Map(), // track id -> TrackInfo of what we publish (ids for unpublish)
    subscribed: new Set(),
    pub: null, // publisher RTCPeerConnection (SFU)
    sub: null, // subscriber RTCPeerConnection (SFU)
    p2p: null, // RTCPeerConnection (P2P)
    channel: null, // RTCDataChannel (P2P)
    iceServers: [],
    relayOnly: false,
    local: null, // MediaStream
    screen: null, // MediaStream
    tiles: new Map(), // participant id -> {el, stream, video, stats}
    midToTrack: new Map(), // subscriber mid -> track id
    speaker: null,
    errors: [],
    log: [],
    files: [], // received {name, size, sha256}
    sentFiles: [],
    lastStats: new Map(),
    statsSnapshot: {},
    pendingSubscribe: new Set(),
    publishQueue: Promise.resolve(),
  };

  function status(text) {
    $("status").textContent = text;
    state.log.push(`${new Date().toISOString()} ${text}`);
  }

  function send(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  async function fetchToken(room, identity, p2p) {
    const q = new URLSearchParams({ room, identity });
    if (p2p) q.set("p2p", "1");
    const r = await fetch(`/token?${q}`);
    if (!r.ok) throw new Error(`no demo token (HTTP ${r.status}): paste a token from \`relay token\``);
    return (await r.json()).token;
  }

  async function join(opts = {}) {
    const room = opts.room ?? $("room").value;
    const identity = opts.identity ?? ($("identity").value || `guest-${Math.floor(Math.random() * 1e4)}`);
    const mode = opts.mode ?? $("mode").value;
    state.relayOnly = opts.relayOnly ?? $("relay-only").checked;
    state.publishMedia = opts.media ?? true;
    state.codec = opts.codec ?? null; // e.g. "H264": preferred for published video
    // Test option: drop the SFU's UDP candidates, as if the network blocked UDP (the
    // browser then reaches the SFU over ICE-TCP only).
    state.tcpOnly = opts.tcpOnly ?? false;
    let token = opts.token ?? $("token").value;
    if (!token) token = await fetchToken(room, identity, mode === "p2p");
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws`);
    state.ws = ws;
    state.mode = mode;
    state.room = room;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("WebSocket failed"));
    });
    ws.onmessage = (e) => onMessage(JSON.parse(e.data)).catch((err) => fail(err));
    ws.onclose = () => status("Disconnected.");
    send({ type: "join", room, token, mode });
    $("join").disabled = true;
    $("leave").disabled = false;
    $("controls").hidden = false;
    status(`Joining ${room} as ${identity}...`);
  }

  function fail(err) {
    state.errors.push(String(err && err.message ? err.message : err));
    status(`Error: ${err && err.message ? err.message : err}`);
    console.error(err);
  }

  async function onMessage(m) {
    switch (m.type) {
      case "joined":
        state.me = m.participant;
        for (const p of m.participants) state.participants.set(p.id, p.identity);
        status(`In ${m.room} as ${m.participant} (${m.mode}).`);
        if (m.mode === "sfu") {
          for (const t of m.tracks) state.tracks.set(t.id, t);
          await startPublishing();
          subscribe([...state.tracks.keys()]);
        } else {
          state.iceServers = m.ice_servers || [];
          $("p2p-file").hidden = false;
          $("screen").hidden = true;
          // The second to arrive calls the first.
          if (m.participants.length > 0) await p2pCall();
        }
        break;
      case "participant_joined":
        state.participants.set(m.participant.id, m.participant.identity);
        break;
      case "participant_left":
        state.participants.delete(m.participant);
        removeTile(m.participant);
        if (state.mode === "p2p") p2pHangup();
        break;
      case "track_published":
        // Our own tracks come back too (that is how we learn their ids, for unpublish):
        // kept apart, never subscribed to (the server would refuse) nor given a tile.
        if (m.track.participant === state.me) {
          state.ownTracks.set(m.track.id, m.track);
          break;
        }
        state.tracks.set(m.track.id, m.track);
        subscribe([m.track.id]);
        break;
      case "track_unpublished":
        state.ownTracks.delete(m.track);
        state.tracks.delete(m.track);
        state.subscribed.delete(m.track);
        break;
      case "offer":
        if (state.mode === "sfu") await onSubscriberOffer(m.sdp);
        else await p2pOnOffer(m.sdp);
        break;
      case "answer":
        if (state.mode === "sfu") await state.pub.setRemoteDescription({ type: "answer", sdp: sfuSdp(m.sdp) });
        else await state.p2p.setRemoteDescription({ type: "answer", sdp: m.sdp });
        break;
      case "candidate":
        if (state.mode === "p2p" && state.p2p && m.candidate) {
          await state.p2p.addIceCandidate({ candidate: m.candidate, sdpMid: m.mid ?? "0" });
        }
        break;
      case "active_speaker":
        state.speaker = m.participant;
        for (const [id, t] of state.tiles) t.el.classList.toggle("speaking", id === m.participant);
        break;
      case "error":
        state.errors.push(`${m.code}: ${m.message}`);
        status(`Server error ${m.code}: ${m.message}`);
        break;
      case "pong":
        break;
      default:
        break;
    }
  }

  // ---- SFU: publishing -------------------------------------------------------------

  async function startPublishing() {
    state.pub = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    // Not max-bundle: when every subscribed track is gone, the SFU's offer has only
    // closed sections and no BUNDLE group, which max-bundle refuses.
    state.sub = new RTCPeerConnection();
    state.sub.ontrack = onRemoteTrack;
    if (!state.publishMedia) return;
    state.local = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 1280, height: 720, frameRate: 30 },
    });
    const audio = state.pub.addTransceiver(state.local.getAudioTracks()[0], { direction: "sendonly" });
    const video = state.pub.addTransceiver(state.local.getVideoTracks()[0], {
      direction: "sendonly",
      sendEncodings: SIMULCAST,
    });
    preferCodec(video);
    addTile(state.me, "me", true).video.srcObject = new MediaStream(state.local.getVideoTracks());
    await renegotiate([
      { transceiver: audio, kind: "audio", source: "microphone" },
      { transceiver: video, kind: "video", source: "camera", simulcast: SIMULCAST.map((e) => e.rid) },
    ]);
  }

  // Offers the publisher connection again with new transceivers, announcing them.
  function renegotiate(added) {
    state.publishQueue = state.publishQueue.then(async () => {
      const offer = await state.pub.createOffer();
      await state.pub.setLocalDescription(offer);
      const tracks = added.map((a) => {
        const t = { kind: a.kind, source: a.source, mid: a.transceiver.mid };
        if (a.simulcast) t.simulcast = a.simulcast;
        return t;
      });
      send({ type: "publish", tracks });
      send({ type: "offer", sdp: state.pub.localDescription.sdp });
    });
    return state.publishQueue;
  }

  // Puts `state.codec` (e.g. "H264") first in a video transceiver's codec list, when the
  // browser has it.
  function preferCodec(tr) {
    if (!state.codec || !tr.setCodecPreferences || !RTCRtpSender.getCapabilities) return;
    const want = `video/${state.codec}`.toLowerCase();
    const all = RTCRtpSender.getCapabilities("video").codecs;
    const first = all.filter((c) => c.mimeType.toLowerCase() === want);
    if (first.length === 0) throw new Error(`this browser cannot send ${state.codec}`);
    tr.setCodecPreferences([...first, ...all.filter((c) => c.mimeType.toLowerCase() !== want)]);
  }

  // `stream`: a video MediaStream to share instead of asking getDisplayMedia (tests).
  async function shareScreen(stream) {
    if (!state.pub) return;
    state.screen = stream instanceof MediaStream ? stream : await navigator.mediaDevices.getDisplayMedia({ video: true });
    const tr = state.pub.addTransceiver(state.screen.getVideoTracks()[0], { direction: "sendonly" });
    preferCodec(tr);
    await renegotiate([{ transceiver: tr, kind: "video", source: "screen" }]);
  }

  // ---- SFU: receiving --------------------------------------------------------------

  function subscribe(ids) {
    const fresh = ids.filter((id) => {
      const t = state.tracks.get(id);
      return t && t.participant !== state.me && !state.subscribed.has(id);
    });
    if (fresh.length === 0) return;
    for (const id of fresh) state.subscribed.add(id);
    send({ type: "subscribe", tracks: fresh });
  }

  // The SFU's SDP, without its UDP candidates when the `tcpOnly` test option is set.
  function sfuSdp(sdp) {
    if (!state.tcpOnly) return sdp;
    return sdp
      .split("\r\n")
      .filter((l) => !/^a=candidate:\S+ \d+ udp /i.test(l))
      .join("\r\n");
  }

  async function onSubscriberOffer(sdp) {
    await state.sub.setRemoteDescription({ type: "offer", sdp: sfuSdp(sdp) });
    const answer = await state.sub.createAnswer();
    await state.sub.setLocalDescription(answer);
    send({ type: "answer", sdp: state.sub.localDescription.sdp });
  }

  function onRemoteTrack(e) {
    // msid = "<participant id> <track id>"
    const stream = e.streams[0];
    const participant = stream ? stream.id : "unknown";
    const trackId = e.track.id;
    state.midToTrack.set(e.transceiver.mid, trackId);
    const info = state.tracks.get(trackId);
    const screen = info && info.source === "screen";
    const key = screen ? `${participant}/screen` : participant;
    let tile = state.tiles.get(key);
    if (!tile) tile = addTile(key, (state.participants.get(participant) || participant) + (screen ? " (screen)" : ""), false);
    tile.stream.addTrack(e.track);
    if (e.track.kind === "video") {
      tile.trackId = trackId;
      tile.select.hidden = !(info && info.simulcast && info.simulcast.length > 1);
    }
    tile.video.srcObject = tile.stream;
    tile.video.play().catch(() => {});
    e.track.onended = () => tile.stream.removeTrack(e.track);
  }

  function addTile(id, name, local) {
    const el = document.createElement("div");
    el.className = local ? "tile local" : "tile";
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = local;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const stats = document.createElement("span");
    stats.className = "stats";
    const select = document.createElement("select");
    select.hidden = true;
    for (const [v, t] of [["", "auto"], ["0", "low"], ["1", "medium"], ["2", "high"]]) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = t;
      select.append(o);
    }
    select.onchange = () => {
      const tile = state.tiles.get(id);
      if (tile && tile.trackId) send({ type: "set_max_layer", track: tile.trackId, layer: Number(select.value || 2) });
    };
    el.append(video, label, stats, select);
    $("grid").append(el);
    const tile = { el, video, stats, select, stream: new MediaStream(), trackId: null };
    state.tiles.set(id, tile);
    return tile;
  }

  function removeTile(participant) {
    for (const [key, tile] of state.tiles) {
      if (key === participant || key.startsWith(`${participant}/`)) {
        tile.el.remove();
        state.tiles.delete(key);
      }
    }
  }

  // ---- Stats -----------------------------------------------------------------------

  async function collectStats() {
    const out = { inbound: {}, rtt: null, outbound: {} };
    const pcs = state.mode === "sfu" ? [state.sub, state.pub] : [state.p2p];
    for (const pc of pcs) {
      if (!pc) continue;
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp") {
          const trackId = state.midToTrack.get(s.mid) || s.mid || s.id;
          const prev = state.lastStats.get(s.id);
          const kbps = prev ? ((s.bytesReceived - prev.bytes) * 8) / (s.timestamp - prev.ts) : 0;
          state.lastStats.set(s.id, { bytes: s.bytesReceived, ts: s.timestamp });
          out.inbound[trackId] = {
            kind: s.kind,
            mid: s.mid,
            ssrc: s.ssrc,
            kbps: Math.round(kbps),
            packetsReceived: s.packetsReceived,
            packetsLost: s.packetsLost,
            framesDecoded: s.framesDecoded,
            frameWidth: s.frameWidth,
            frameHeight: s.frameHeight,
            freezeCount: s.freezeCount,
            totalAudioEnergy: s.totalAudioEnergy,
            audioLevel: s.audioLevel,
            nackCount: s.nackCount,
            pliCount: s.pliCount,
          };
        } else if (s.type === "outbound-rtp") {
          out.outbound[s.rid || s.mid || s.id] = {
            kind: s.kind,
            bytesSent: s.bytesSent,
            frameWidth: s.frameWidth,
            framesPerSecond: s.framesPerSecond,
            qualityLimitationReason: s.qualityLimitationReason,
            active: s.active,
            nackCount: s.nackCount,
            pliCount: s.pliCount,
            retransmittedPacketsSent: s.retransmittedPacketsSent,
          };
        } else if (s.type === "remote-inbound-rtp") {
          out.remoteInbound = out.remoteInbound || {};
          out.remoteInbound[s.ssrc] = { kind: s.kind, fractionLost: s.fractionLost, packetsLost: s.packetsLost, roundTripTime: s.roundTripTime };
        } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
          if (s.currentRoundTripTime !== undefined) out.rtt = Math.round(s.currentRoundTripTime * 1000);
          if (pc === state.pub && s.availableOutgoingBitrate !== undefined) out.sendBitrate = s.availableOutgoingBitrate;
        }
      });
    }
    state.statsSnapshot = out;
    for (const tile of state.tiles.values()) {
      if (!tile.trackId) continue;
      const v = out.inbound[tile.trackId];
      if (!v) continue;
      const layer = v.frameWidth ? `${v.frameWidth}x${v.frameHeight}` : "-";
      tile.stats.textContent = `${v.kbps} kbit/s  ${layer}  rtt ${out.rtt ?? "-"} ms`;
    }
    return out;
  }
  setInterval(() => {
    if (state.ws) collectStats().catch(() => {});
  }, 1000);

  // ---- P2P -------------------------------------------------------------------------

  function p2pConnection() {
    const pc = new RTCPeerConnection({
      iceServers: state.iceServers,
      iceTransportPolicy: state.relayOnly ? "relay" : "all",
    });
    pc.onicecandidate = (e) => {
      send({ type: "candidate", candidate: e.candidate ? e.candidate.candidate : "", mid: e.candidate ? e.candidate.sdpMid : undefined });
    };
    pc.ontrack = (e) => {
      let tile = state.tiles.get("peer");
      if (!tile) tile = addTile("peer", "peer", false);
      tile.stream.addTrack(e.track);
      tile.video.srcObject = tile.stream;
      tile.video.play().catch(() => {});
    };
    pc.ondatachannel = (e) => setupChannel(e.channel);
    state.p2p = pc;
    return pc;
  }

  async function addP2pMedia(pc) {
    if (!state.publishMedia) return;
    state.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    for (const t of state.local.getTracks()) pc.addTrack(t, state.local);
    addTile(state.me, "me", true).video.srcObject = new MediaStream(state.local.getVideoTracks());
  }

  async function p2pCall() {
    const pc = p2pConnection();
    setupChannel(pc.createDataChannel("files", { ordered: true }));
    await addP2pMedia(pc);
    await pc.setLocalDescription(await pc.createOffer());
    send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  async function p2pOnOffer(sdp) {
    const pc = state.p2p || p2pConnection();
    await pc.setRemoteDescription({ type: "offer", sdp });
    await addP2pMedia(pc);
    await pc.setLocalDescription(await pc.createAnswer());
    send({ type: "answer", sdp: pc.localDescription.sdp });
  }

  function p2pHangup() {
    if (state.p2p) state.p2p.close();
    state.p2p = null;
    state.channel = null;
  }

  async function sha256(buf) {
    const d = await crypto.subtle.digest("SHA-256", buf);
    return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setupChannel(ch) {
    ch.binaryType = "arraybuffer";
    state.channel = ch;
    let incoming = null;
    ch.onopen = () => {
      $("send-file").disabled = false;
      status("Peer connected: you can send a file.");
    };
    ch.onmessage = async (e) => {
      if (typeof e.data === "string") {
        const m = JSON.parse(e.data);
        if (m.file) incoming = { name: m.file, size: m.size, parts: [], got: 0 };
        return;
      }
      if (!incoming) return;
      incoming.parts.push(e.data);
      incoming.got += e.data.byteLength;
      if (incoming.got >= incoming.size) {
        const blob = new Blob(incoming.parts);
        const buf = await blob.arrayBuffer();
        const rec = { name: incoming.name, size: buf.byteLength, sha256: await sha256(buf) };
        state.files.push(rec);
        incoming = null;
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = rec.name;
        a.textContent = `${rec.name} (${rec.size} bytes)`;
        const li = document.createElement("li");
        li.append(a);
        $("file-list").append(li);
        $("files").hidden = false;
      }
    };
  }

  async function sendBuffer(name, buf) {
    const ch = state.channel;
    if (!ch || ch.readyState !== "open") throw new Error("no open data channel");
    ch.bufferedAmountLowThreshold = 256 * 1024;
    ch.send(JSON.stringify({ file: name, size: buf.byteLength }));
    for (let off = 0; off < buf.byteLength; off += CHUNK) {
      if (ch.bufferedAmount > 1024 * 1024) {
        await new Promise((r) => (ch.onbufferedamountlow = r));
      }
      ch.send(buf.slice(off, off + CHUNK));
    }
    const rec = { name, size: buf.byteLength, sha256: await sha256(buf) };
    state.sentFiles.push(rec);
    return rec;
  }

  async function sendRandom(bytes) {
    const buf = new Uint8Array(bytes);
    for (let off = 0; off < bytes; off += 65536) crypto.getRandomValues(buf.subarray(off, Math.min(bytes, off + 65536)));
    return sendBuffer(`random-${bytes}.bin`, buf.buffer);
  }

  // The selected candidate pair of the P2P connection, or of `which` ("pub" or "sub").
  async function selectedPair(which) {
    const pc = which ? state[which] : state.p2p;
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) return null;
    const c = (id) => {
      const x = stats.get(id);
      return x && { type: x.candidateType, address: x.address, port: x.port, protocol: x.protocol, url: x.url };
    };
    return { local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId) };
  }

  function leave() {
    send({ type: "leave" });
    for (const pc of [state.pub, state.sub, state.p2p]) if (pc) pc.close();
    for (const s of [state.local, state.screen]) if (s) s.getTracks().forEach((t) => t.stop());
    if (state.ws) state.ws.close();
    for (const id of [...state.tiles.keys()]) removeTile(id);
    $("join").disabled = false;
    $("leave").disabled = true;
    $("controls").hidden = true;
    status("Left.");
  }

  // ---- UI wiring -------------------------------------------------------------------

  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    join().catch(fail);
  });
  $("leave").onclick = leave;
  $("screen").onclick = () => shareScreen().catch(fail);
  $("send-file").onclick = async () => {
    const f = $("file").files[0];
    if (f) sendBuffer(f.name, await f.arrayBuffer()).catch(fail);
  };
  const params = new URLSearchParams(location.search);
  for (const k of ["room", "identity", "mode", "token"]) if (params.get(k)) $(k).value = params.get(k);

  window.demo = {
    state,
    join,
    leave,
    subscribe,
    shareScreen,
    setMaxLayer: (track, layer) => send({ type: "set_max_layer", track, layer }),
    stats: collectStats,
    sendRandom,
    selectedPair,
    sendRaw: (text) => state.ws.send(text),
  };
})();
