// Headless Chromium against the relay's SFU and signaling, through the relay's own demo
// page (so the page is tested too). Scenarios:
//
//   sfu: three participants join one room, each publishes fake camera (simulcast) and
//        microphone; every participant must decode the video and the audio of the other
//        two (framesDecoded and totalAudioEnergy keep growing). Then one receiver caps a
//        remote video at the lowest layer: its frames must keep increasing across the
//        switch (no freeze) and its resolution must drop. Meanwhile a fourth, hostile
//        client sends bad signaling input (malformed JSON, bad/expired tokens, an unknown
//        room, an oversized message, a flood): each gets its error, and the three
//        participants keep receiving throughout.
//   codecs: one participant publishes H.264 (setCodecPreferences through the page's
//        `codec` join option), another VP8; the others decode each as that codec. Then
//        the first shares its screen and the others decode the screen track.
//   tcp: two participants join with the page's `tcpOnly` option, which removes the
//        SFU's UDP candidates from its SDP before setRemoteDescription: this simulates a
//        network that blocks UDP (the test machine has no packet filter to do it for
//        real), so the only candidates left are the SFU's passive ICE-TCP ones. Each
//        must decode the other's video and audio (framesDecoded and totalAudioEnergy
//        keep growing), and the selected candidate pair of both peer connections of
//        both participants must be TCP on both ends.
//   p2p: two participants join a P2P room with the relay-only ICE policy and move a
//        file over a DataChannel through the relay's TURN; the SHA-256 of both ends must
//        match and both selected candidate pairs must be relay candidates.
//
// Driven by tests/tests/sfu_chromium.rs. Prints `RESULT <json>` and exits 0 when every
// check passed, 1 otherwise (the JSON says which failed).
//
// Usage: node sfu_room.mjs --url http://HOST:PORT --scenario sfu|codecs|tcp|p2p --tokens JSON
//          [--timeout-ms MS] [--chromium PATH]

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

const url = arg("url");
const scenario = arg("scenario");
const tokens = JSON.parse(arg("tokens"));
const timeoutMs = Number(arg("timeout-ms", "90000"));
const executablePath = arg("chromium", "/usr/bin/chromium");
const deadline = Date.now() + timeoutMs;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: !!ok, detail });
  console.error(`${ok ? "ok  " : "FAIL"} ${name}${detail === undefined ? "" : ` ${JSON.stringify(detail)}`}`);
}

// Polls `fn` every `every` ms until it returns a truthy value or `ms` pass (bounded by
// the global deadline too).
async function until(fn, ms, every = 500) {
  const end = Math.min(Date.now() + ms, deadline);
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(every);
  }
  return null;
}

async function stats(page) {
  return page.evaluate(() => window.demo.stats());
}

function inboundOf(s, kind) {
  return Object.entries(s.inbound).filter(([, v]) => v.kind === kind);
}

async function newPage(browser) {
  const context = await browser.newContext({ permissions: ["camera", "microphone"] });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") console.error(`[page] ${m.text()}`);
  });
  page.on("pageerror", (e) => console.error(`[page error] ${e}`));
  await page.goto(url, { timeout: 15000 });
  return page;
}

// A raw WebSocket client inside a page, for the bad-input checks: sends `frames` and
// collects what comes back until `settleMs` pass without a message or the socket closes.
async function rawExchange(page, frames, settleMs = 3000) {
  return page.evaluate(
    async ({ frames, settleMs }) => {
      const ws = new WebSocket(`ws://${location.host}/ws`);
      const got = [];
      let closed = null;
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = () => reject(new Error("ws error"));
      });
      let last = Date.now();
      ws.onmessage = (e) => {
        got.push(JSON.parse(e.data));
        last = Date.now();
      };
      ws.onclose = (e) => {
        closed = e.code;
      };
      for (const f of frames) ws.send(f);
      const end = Date.now() + 20000;
      while (Date.now() < end && closed === null && Date.now() - last < settleMs) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const open = closed === null;
      if (open) ws.close();
      return { got, closed, open };
    },
    { frames, settleMs },
  );
}

async function sfuScenario(browser, result) {
  const room = tokens.room;
  const pages = [];
  for (let i = 0; i < 3; i++) {
    const page = await newPage(browser);
    await page.evaluate((o) => window.demo.join(o), { room, identity: `p${i}`, mode: "sfu", token: tokens.participants[i] });
    pages.push(page);
  }
  // Everyone receives the two others' audio and video.
  const ready = await until(async () => {
    const all = await Promise.all(pages.map(stats));
    const ok = all.every((s) => {
      const v = inboundOf(s, "video").filter(([, x]) => x.framesDecoded > 0);
      const a = inboundOf(s, "audio").filter(([, x]) => x.totalAudioEnergy > 0);
      return v.length >= 2 && a.length >= 2;
    });
    return ok ? all : null;
  }, 45000);
  check("three participants each decode two videos and two audio tracks", ready, ready ? null : await Promise.all(pages.map(stats)));
  if (!ready) return;
  // Hostile client while media flows.
  const hostile = await newPage(browser);
  const before = await Promise.all(pages.map(stats));
  const bad = {};
  bad.badJson = await rawExchange(hostile, ["{not json", JSON.stringify({ type: "ping", id: 1 })]);
  check("malformed JSON gets bad_json and the connection stays usable",
    bad.badJson.got[0]?.code === "bad_json" && bad.badJson.got.some((m) => m.type === "pong"), bad.badJson);
  bad.badToken = await rawExchange(hostile, [JSON.stringify({ type: "join", room, token: tokens.bad, mode: "sfu" })]);
  check("a badly signed token gets bad_token and the connection is closed",
    bad.badToken.got[0]?.code === "bad_token" && !bad.badToken.open, bad.badToken);
  bad.expired = await rawExchange(hostile, [JSON.stringify({ type: "join", room, token: tokens.expired, mode: "sfu" })]);
  check("an expired token gets expired_token", bad.expired.got[0]?.code === "expired_token" && !bad.expired.open, bad.expired);
  bad.unknownRoom = await rawExchange(hostile, [JSON.stringify({ type: "join", room: tokens.unknownRoom, token: tokens.unknownRoomToken, mode: "sfu" })]);
  check("an unknown room gets unknown_room", bad.unknownRoom.got[0]?.code === "unknown_room", bad.unknownRoom);
  bad.tooLarge = await rawExchange(hostile, [JSON.stringify({ type: "ping", id: 2, pad: "x".repeat(70 * 1024) })]);
  check("an oversized message gets too_large", bad.tooLarge.got.some((m) => m.code === "too_large"), { got: bad.tooLarge.got.slice(0, 3), closed: bad.tooLarge.closed });
  const flood = Array.from({ length: 3000 }, (_, i) => JSON.stringify({ type: "ping", id: i }));
  bad.flood = await rawExchange(hostile, flood);
  check("a flood gets rate_limited", bad.flood.got.some((m) => m.code === "rate_limited"),
    { replies: bad.flood.got.length, closed: bad.flood.closed });
  result.badInput = Object.fromEntries(Object.entries(bad).map(([k, v]) => [k, { first: v.got[0], closed: v.closed }]));
  await hostile.context().close();
  // The participants were not disturbed: everyone still decodes more frames and audio.
  await sleep(2000);
  const after = await Promise.all(pages.map(stats));
  const progressed = after.every((s, i) =>
    Object.entries(s.inbound).every(([id, x]) => {
      const b = before[i].inbound[id];
      if (!b) return true;
      return x.kind === "video" ? x.framesDecoded > b.framesDecoded : x.totalAudioEnergy > b.totalAudioEnergy;
    }) && inboundOf(s, "video").length >= 2,
  );
  check("media kept flowing to every participant during the bad input", progressed, { before, after });
  // Layer switch: receiver 0 caps one remote video to the lowest layer. First wait (on a
  // loaded machine the publishers' encoders may still be limited to the lowest layer)
  // until one video arrives above the lowest layer (1280/4 = 320 wide), else there is
  // nothing to switch down from.
  const s0 =
    (await until(async () => {
      const s = await stats(pages[0]);
      return inboundOf(s, "video").some(([, x]) => (x.frameWidth || 0) > 320) ? s : null;
    }, 20000)) || (await stats(pages[0]));
  const [trackId, v0] = inboundOf(s0, "video").sort((a, b) => (b[1].frameWidth || 0) - (a[1].frameWidth || 0))[0];
  result.layerBefore = { trackId, width: v0.frameWidth, height: v0.frameHeight };
  await pages[0].evaluate(([t]) => window.demo.setMaxLayer(t, 0), [trackId]);
  const samples = [];
  for (let i = 0; i < 16; i++) {
    await sleep(500);
    const s = await stats(pages[0]);
    const v = s.inbound[trackId];
    samples.push({ frames: v?.framesDecoded ?? -1, width: v?.frameWidth ?? 0, freezes: v?.freezeCount ?? 0 });
  }
  result.layerSamples = samples;
  let stalls = 0;
  for (let i = 2; i < samples.length; i++) if (samples[i].frames <= samples[i - 2].frames) stalls++;
  const last = samples[samples.length - 1];
  check("after the switch to the lowest layer the resolution dropped", last.width > 0 && last.width < v0.frameWidth, { before: v0.frameWidth, after: last.width });
  check("frames kept increasing across the layer switch (no second without a new frame)", stalls === 0 && last.frames > samples[0].frames, samples);
  result.final = await Promise.all(pages.map(stats));
  for (const p of pages) await p.evaluate(() => window.demo.leave());
}

// Per received video track of a page: its codec (getStats codecId -> mimeType), frames
// decoded, and the publisher's announced source and participant.
async function videoTracks(page) {
  return page.evaluate(async () => {
    const st = window.demo.state;
    const report = await st.sub.getStats();
    const out = {};
    report.forEach((s) => {
      if (s.type !== "inbound-rtp" || s.kind !== "video") return;
      const id = st.midToTrack.get(s.mid) || s.mid;
      const info = st.tracks.get(id);
      out[id] = {
        mimeType: report.get(s.codecId)?.mimeType ?? null,
        framesDecoded: s.framesDecoded ?? 0,
        width: s.frameWidth ?? 0,
        source: info?.source ?? null,
        participant: info?.participant ?? null,
      };
    });
    return out;
  });
}

// codecs: p0 publishes camera + microphone with H.264 preferred, p1 with the default
// (VP8), p2 only receives. p1 and p2 must decode p0's video as video/H264 and p0 must
// decode p1's VP8. Then p0 shares its screen (getDisplayMedia through the page's button,
// which Chromium's fake-UI flags answer with a fake screen; a canvas.captureStream()
// track through the same path if that fails): p1 and p2 must decode a growing track
// whose announced source is "screen".
async function codecsScenario(browser, result) {
  const room = tokens.room;
  const opts = [{ codec: "H264" }, {}, { media: false }];
  const pages = [];
  for (let i = 0; i < 3; i++) {
    const page = await newPage(browser);
    await page.evaluate((o) => window.demo.join(o), { room, identity: `p${i}`, mode: "sfu", token: tokens.participants[i], ...opts[i] });
    pages.push(page);
  }
  const me = await until(() => pages[0].evaluate(() => window.demo.state.me), 10000, 100);
  const p1 = await until(() => pages[1].evaluate(() => window.demo.state.me), 10000, 100);
  const fromP0 = (tracks, source) => Object.values(tracks).filter((t) => t.participant === me && t.source === source);
  const h264 = await until(async () => {
    const all = await Promise.all(pages.map(videoTracks));
    const receiversOk = [all[1], all[2]].every((v) => fromP0(v, "camera").some((t) => t.mimeType === "video/H264" && t.framesDecoded > 10));
    const vp8Ok = Object.values(all[0]).some((t) => t.participant === p1 && t.mimeType === "video/VP8" && t.framesDecoded > 10);
    return receiversOk && vp8Ok ? all : null;
  }, 45000);
  const seen = h264 || (await Promise.all(pages.map(videoTracks)));
  result.camera = seen;
  result.published = await pages[0].evaluate(async () => {
    const r = await window.demo.state.pub.getStats();
    const out = [];
    r.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") out.push({ rid: s.rid, mimeType: r.get(s.codecId)?.mimeType, framesEncoded: s.framesEncoded, encoder: s.encoderImplementation });
    });
    return out;
  });
  check("p1 and p2 decode p0's camera as video/H264, p0 decodes p1's VP8", h264, { seen, published: result.published, errors: await pages[0].evaluate(() => window.demo.state.errors) });
  // Screen share: the page's button (a user gesture), answered by the fake UI.
  await pages[0].click("#screen");
  const shared = await until(() => pages[0].evaluate(() => (window.demo.state.screen ? "getDisplayMedia" : window.demo.state.errors.length ? "error" : null)), 10000, 200);
  result.screenPath = shared;
  if (shared !== "getDisplayMedia") {
    result.screenError = await pages[0].evaluate(() => window.demo.state.errors.slice(-1)[0]);
    console.error(`getDisplayMedia did not work headless (${result.screenError}); sharing a canvas.captureStream() track as the screen`);
    await pages[0].evaluate(() => {
      const c = document.createElement("canvas");
      c.width = 640;
      c.height = 360;
      const g = c.getContext("2d");
      let n = 0;
      setInterval(() => {
        g.fillStyle = `hsl(${n++ % 360} 60% 50%)`;
        g.fillRect(0, 0, c.width, c.height);
        g.fillStyle = "#fff";
        g.font = "48px sans-serif";
        g.fillText(`screen ${n}`, 40, 180);
      }, 33);
      return window.demo.shareScreen(c.captureStream(30));
    });
    result.screenPath = "canvas";
  }
  const screenFrames = (all) => [all[1], all[2]].map((v) => fromP0(v, "screen").reduce((m, t) => Math.max(m, t.framesDecoded), 0));
  const first = await until(async () => {
    const all = await Promise.all(pages.map(videoTracks));
    return screenFrames(all).every((f) => f > 0) ? all : null;
  }, 30000);
  let grew = false;
  if (first) {
    await sleep(2000);
    const later = await Promise.all(pages.map(videoTracks));
    const [a, b] = [screenFrames(first), screenFrames(later)];
    grew = b.every((f, i) => f > a[i]);
    result.screen = { first: first.slice(1), later: later.slice(1) };
  } else {
    result.screen = { seen: (await Promise.all(pages.map(videoTracks))).slice(1) };
  }
  check(`p1 and p2 decode p0's screen share (via ${result.screenPath}) and its frames grow`, first && grew, result.screen);
  for (const p of pages) await p.evaluate(() => window.demo.leave());
}

async function tcpScenario(browser, result) {
  const room = tokens.room;
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await newPage(browser);
    await page.evaluate((o) => window.demo.join(o), { room, identity: `t${i}`, mode: "sfu", token: tokens.participants[i], tcpOnly: true });
    pages.push(page);
  }
  const receiving = (s) =>
    inboundOf(s, "video").some(([, x]) => x.framesDecoded > 0) && inboundOf(s, "audio").some(([, x]) => x.totalAudioEnergy > 0);
  const first = await until(async () => {
    const all = await Promise.all(pages.map(stats));
    return all.every(receiving) ? all : null;
  }, 40000);
  check("over TCP only, each participant decodes the other's video and audio", first, first ? null : await Promise.all(pages.map(stats)));
  result.pairs = [];
  for (const p of pages) {
    result.pairs.push({
      pub: await p.evaluate(() => window.demo.selectedPair("pub")),
      sub: await p.evaluate(() => window.demo.selectedPair("sub")),
    });
  }
  result.pairs.forEach((pp, i) => {
    for (const [which, pair] of Object.entries(pp)) {
      check(`participant ${i}'s ${which} connection selected a TCP pair (local and remote)`,
        pair && pair.local?.protocol === "tcp" && pair.remote?.protocol === "tcp", pair);
    }
  });
  if (!first) return;
  await sleep(3000);
  const later = await Promise.all(pages.map(stats));
  const sum = (s, kind, field) => inboundOf(s, kind).reduce((m, [, x]) => m + (x[field] || 0), 0);
  result.growth = later.map((s, i) => ({
    frames: [sum(first[i], "video", "framesDecoded"), sum(s, "video", "framesDecoded")],
    energy: [sum(first[i], "audio", "totalAudioEnergy"), sum(s, "audio", "totalAudioEnergy")],
  }));
  check("over TCP, decoded frames and audio energy keep growing for both",
    result.growth.every((g) => g.frames[1] > g.frames[0] + 10 && g.energy[1] > g.energy[0]), result.growth);
  for (const p of pages) await p.evaluate(() => window.demo.leave());
}

async function p2pScenario(browser, result) {
  const room = tokens.room;
  const a = await newPage(browser);
  const b = await newPage(browser);
  await a.evaluate((o) => window.demo.join(o), { room, identity: "caller-a", mode: "p2p", relayOnly: true, media: false, token: tokens.participants[0] });
  await sleep(500);
  await b.evaluate((o) => window.demo.join(o), { room, identity: "caller-b", mode: "p2p", relayOnly: true, media: false, token: tokens.participants[1] });
  const open = await until(() => b.evaluate(() => window.demo.state.channel?.readyState === "open"), 30000);
  check("the P2P DataChannel opened through TURN", open, await b.evaluate(() => window.demo.state.log));
  if (!open) return;
  const bytes = Number(tokens.bytes || 2000000);
  const sent = await b.evaluate((n) => window.demo.sendRandom(n), bytes);
  const got = await until(() => a.evaluate(() => window.demo.state.files[0] || null), 60000);
  result.sent = sent;
  result.received = got;
  check("the file arrived intact", got && got.sha256 === sent.sha256 && got.size === bytes, { sent, got });
  result.pairA = await a.evaluate(() => window.demo.selectedPair());
  result.pairB = await b.evaluate(() => window.demo.selectedPair());
  for (const [n, p] of [["a", result.pairA], ["b", result.pairB]]) {
    check(`peer ${n}'s selected pair uses relay candidates`, p && p.local?.type === "relay" && p.remote?.type === "relay", p);
  }
}

const result = { scenario };
const killer = setTimeout(() => {
  console.error(`timed out after ${timeoutMs} ms`);
  console.log(`RESULT ${JSON.stringify({ scenario, ok: false, checks, timedOut: true })}`);
  process.exit(3);
}, timeoutMs + 15000);
let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--autoplay-policy=no-user-gesture-required",
      // getUserMedia needs a secure context; the relay serves the page over plain HTTP
      // on a namespace address (deployments put it behind HTTPS).
      `--unsafely-treat-insecure-origin-as-secure=${new URL(url).origin}`,
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 30000,
  });
  if (scenario === "sfu") await sfuScenario(browser, result);
  else if (scenario === "p2p") await p2pScenario(browser, result);
  else if (scenario === "codecs") await codecsScenario(browser, result);
  else if (scenario === "tcp") await tcpScenario(browser, result);
  else throw new Error(`unknown scenario ${scenario}`);
} catch (e) {
  check("the scenario ran without an exception", false, String(e && e.stack ? e.stack : e));
} finally {
  if (browser) await browser.close().catch(() => {});
}
clearTimeout(killer);
result.checks = checks;
result.ok = checks.length > 0 && checks.every((c) => c.ok);
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(result.ok ? 0 : 1);
