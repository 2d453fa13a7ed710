// Headless Chromium through a TURN server: two RTCPeerConnections in one page, both with
// iceTransportPolicy "relay" and the server under test as their only ICE server, open a
// DataChannel, exchange messages and a file of a few MB (with backpressure), and report
// what arrived and which candidate pair ICE selected.
//
// Driven by tests/tests/turn_chromium.rs. Uses Debian's /usr/bin/chromium through
// playwright-core (never downloads a browser). Prints one line `RESULT <json>` and exits
// 0 when the bytes arrived intact and the selected pairs are relay candidates; 1 otherwise.
//
// Usage: node turn_datachannel.mjs --turn HOST:PORT --user U --pass P
//          [--bytes N] [--timeout-ms MS] [--chromium PATH]

import { createServer } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) {
    if (dflt === undefined) {
      console.error(`missing --${name}`);
      process.exit(2);
    }
    return dflt;
  }
  return process.argv[i + 1];
}

const turn = arg("turn");
const user = arg("user");
const pass = arg("pass");
const bytes = Number(arg("bytes", "3000000"));
const timeoutMs = Number(arg("timeout-ms", "60000"));
const executablePath = arg("chromium", "/usr/bin/chromium");

// The page: everything happens in the browser; the result comes back to node.
const PAGE = `<!doctype html><meta charset="utf-8"><title>turn datachannel</title>
<script>
function hex(buf) {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  if (!pair) return null;
  const c = (id) => { const x = stats.get(id); return x && { type: x.candidateType, address: x.address, port: x.port, protocol: x.protocol, relayProtocol: x.relayProtocol, url: x.url }; };
  return { state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived, local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId) };
}
async function run(cfg, size, messages) {
  const log = [];
  window.__progress = { log, gathered: null };
  const pc1 = new RTCPeerConnection(cfg);
  const pc2 = new RTCPeerConnection(cfg);
  const gathered = { pc1: [], pc2: [] };
  window.__progress.gathered = gathered;
  window.__progress.pcs = [pc1, pc2];
  pc1.onicecandidate = (e) => { if (e.candidate) { gathered.pc1.push(e.candidate.candidate); pc2.addIceCandidate(e.candidate); } };
  pc2.onicecandidate = (e) => { if (e.candidate) { gathered.pc2.push(e.candidate.candidate); pc1.addIceCandidate(e.candidate); } };
  pc1.oniceconnectionstatechange = () => log.push("pc1 ice " + pc1.iceConnectionState);
  pc2.oniceconnectionstatechange = () => log.push("pc2 ice " + pc2.iceConnectionState);
  const dc = pc1.createDataChannel("file", { ordered: true });
  dc.binaryType = "arraybuffer";
  const received = { texts: [], chunks: [], bytes: 0 };
  let fileDone, textsDone;
  const fileArrived = new Promise((r) => (fileDone = r));
  const textsArrived = new Promise((r) => (textsDone = r));
  pc2.ondatachannel = (e) => {
    const rx = e.channel;
    rx.binaryType = "arraybuffer";
    rx.onmessage = (m) => {
      if (typeof m.data === "string") {
        received.texts.push(m.data);
        if (received.texts.length === messages) textsDone();
      } else {
        received.chunks.push(new Uint8Array(m.data));
        received.bytes += m.data.byteLength;
        if (received.bytes >= size) fileDone();
      }
    };
  };
  const opened = new Promise((resolve, reject) => { dc.onopen = resolve; dc.onerror = (e) => reject(new Error("datachannel error " + e.error)); });
  const offer = await pc1.createOffer();
  await pc1.setLocalDescription(offer);
  await pc2.setRemoteDescription(offer);
  const answer = await pc2.createAnswer();
  await pc2.setLocalDescription(answer);
  await pc1.setRemoteDescription(answer);
  await opened;
  log.push("datachannel open");
  const sentTexts = [];
  for (let i = 0; i < messages; i++) { const t = "hello through the relay #" + i; sentTexts.push(t); dc.send(t); }
  await textsArrived;
  // The file: random bytes, its digest computed before sending.
  const file = new Uint8Array(size);
  for (let off = 0; off < size; off += 65536) crypto.getRandomValues(file.subarray(off, Math.min(size, off + 65536)));
  const sentSha = hex(await crypto.subtle.digest("SHA-256", file));
  const CHUNK = 16 * 1024;
  dc.bufferedAmountLowThreshold = 256 * 1024;
  const t0 = performance.now();
  let waits = 0;
  for (let off = 0; off < size; off += CHUNK) {
    if (dc.bufferedAmount > 1024 * 1024) {
      waits++;
      await new Promise((r) => { dc.onbufferedamountlow = () => { dc.onbufferedamountlow = null; r(); }; });
    }
    dc.send(file.subarray(off, Math.min(size, off + CHUNK)));
  }
  await fileArrived;
  const ms = performance.now() - t0;
  const all = new Uint8Array(received.bytes);
  let o = 0;
  for (const c of received.chunks) { all.set(c, o); o += c.length; }
  const receivedSha = hex(await crypto.subtle.digest("SHA-256", all));
  const result = {
    textsOk: JSON.stringify(sentTexts) === JSON.stringify(received.texts),
    bytesSent: size, bytesReceived: received.bytes, sentSha, receivedSha,
    ms, backpressureWaits: waits,
    pc1: await selectedPair(pc1), pc2: await selectedPair(pc2),
    gathered, log,
  };
  pc1.close(); pc2.close();
  return result;
}
</script>`;

const server = createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(PAGE);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const userDataDir = mkdtempSync(join(tmpdir(), "relay-chromium-"));
let context;
let code = 1;
const killer = setTimeout(() => {
  console.error(`timed out after ${timeoutMs} ms`);
  process.exit(3);
}, timeoutMs + 15000);
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  await page.goto(pageUrl);
  const cfg = {
    iceServers: [{ urls: `turn:${turn}?transport=udp`, username: user, credential: pass }],
    iceTransportPolicy: "relay",
  };
  const result = await Promise.race([
    page.evaluate(([c, s]) => run(c, s, 20), [cfg, bytes]),
    new Promise((_, rej) => setTimeout(() => rej(new Error(`no result within ${timeoutMs} ms`)), timeoutMs)),
  ]);
  console.log("RESULT " + JSON.stringify(result));
  const relayed = (p) => p && p.local && p.remote && p.local.type === "relay" && p.remote.type === "relay";
  const ok =
    result.textsOk &&
    result.bytesReceived === bytes &&
    result.sentSha === result.receivedSha &&
    relayed(result.pc1) &&
    relayed(result.pc2);
  code = ok ? 0 : 1;
  if (!ok) console.error("checks failed");
} catch (e) {
  console.error(`error: ${e && e.stack ? e.stack : e}`);
  // What the page got to: ICE states, gathered candidates, candidate pairs.
  try {
    const page = context && context.pages()[0];
    const progress = page && (await page.evaluate(async () => {
      const p = window.__progress;
      if (!p) return null;
      const pairs = [];
      for (const pc of p.pcs || []) {
        const st = await pc.getStats();
        st.forEach((s) => { if (s.type === "candidate-pair") pairs.push({ state: s.state, nominated: s.nominated, requestsSent: s.requestsSent, responsesReceived: s.responsesReceived, local: st.get(s.localCandidateId)?.port, remote: st.get(s.remoteCandidateId)?.port }); });
      }
      return { log: p.log, gathered: p.gathered, pairs };
    }));
    console.error("PROGRESS " + JSON.stringify(progress));
  } catch (e2) {
    console.error(`could not read the page's progress: ${e2}`);
  }
  code = 1;
} finally {
  clearTimeout(killer);
  if (context) await context.close().catch(() => {});
  server.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
