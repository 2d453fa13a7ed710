// Headless Firefox (Debian's firefox-esr, driven by puppeteer-core over WebDriver BiDi)
// and headless Chromium (Debian's, playwright-core) in one SFU room, through the relay's
// own demo page. Each publishes its fake camera (the page asks for three simulcast
// layers) and microphone; each must decode the other's video and audio, and keep
// decoding (framesDecoded and the audio counters grow between two samples).
//
// It also records what Firefox did: its publisher offer and the SFU's answer, the
// subscriber offer and Firefox's answer (written to --capture-dir when given, for the
// relay's SDP fixtures), and Firefox's outbound video streams (one per rid it actually
// sends).
//
// Driven by tests/tests/sfu_firefox.rs. Prints `RESULT <json>` and exits 0 when every
// check passed, 1 otherwise.
//
// Usage: node sfu_firefox.mjs --url http://HOST:PORT --tokens JSON --profile DIR
//          [--firefox PATH] [--chromium PATH] [--timeout-ms MS] [--capture-dir DIR]

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";

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
const tokens = JSON.parse(arg("tokens"));
const profile = arg("profile");
const firefoxPath = arg("firefox", "/usr/bin/firefox-esr");
const chromiumPath = arg("chromium", "/usr/bin/chromium");
const timeoutMs = Number(arg("timeout-ms", "120000"));
const captureDir = arg("capture-dir", "");
const started = Date.now();
const timings = {};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: !!ok, detail });
  console.error(`${ok ? "ok  " : "FAIL"} ${name}${detail === undefined ? "" : ` ${JSON.stringify(detail)}`}`);
}

// Polls `fn` until it returns a truthy value or `ms` pass (each phase has its own bound:
// a slow browser start on a loaded machine does not eat the media phase's time).
async function until(fn, ms, every = 500) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await fn();
    if (v) return v;
    await sleep(every);
  }
  return null;
}

// What a page receives, per remote track: kind, frames decoded, audio counters (Firefox
// and Chromium both name them as in webrtc-stats; whichever are missing stay null).
async function received(page) {
  return page.evaluate(async () => {
    const st = window.demo.state;
    const out = [];
    if (!st.sub) return out;
    const report = await st.sub.getStats();
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      out.push({
        kind: s.kind,
        mid: s.mid ?? null,
        mimeType: report.get(s.codecId)?.mimeType ?? null,
        packetsReceived: s.packetsReceived ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
        framesDecoded: s.framesDecoded ?? null,
        frameWidth: s.frameWidth ?? null,
        totalAudioEnergy: s.totalAudioEnergy ?? null,
        totalSamplesReceived: s.totalSamplesReceived ?? null,
        packetsLost: s.packetsLost ?? null,
        nackCount: s.nackCount ?? null,
        pliCount: s.pliCount ?? null,
        firCount: s.firCount ?? null,
        keyFramesDecoded: s.keyFramesDecoded ?? null,
        framesDropped: s.framesDropped ?? null,
      });
    });
    return out;
  });
}

// A track "plays" when video frames were decoded, or audio energy (else, where a browser
// lacks totalAudioEnergy, decoded samples) is above zero.
const videoFrames = (r) => r.filter((x) => x.kind === "video").reduce((m, x) => Math.max(m, x.framesDecoded ?? 0), 0);
const audioAmount = (r) =>
  r.filter((x) => x.kind === "audio").reduce((m, x) => Math.max(m, x.totalAudioEnergy ?? x.totalSamplesReceived ?? 0), 0);

async function published(page) {
  return page.evaluate(async () => {
    const st = window.demo.state;
    const out = [];
    if (!st.pub) return out;
    const report = await st.pub.getStats();
    report.forEach((s) => {
      if (s.type !== "outbound-rtp") return;
      out.push({
        kind: s.kind,
        rid: s.rid ?? null,
        ssrc: s.ssrc,
        mimeType: report.get(s.codecId)?.mimeType ?? null,
        bytesSent: s.bytesSent ?? 0,
        frameWidth: s.frameWidth ?? null,
        framesEncoded: s.framesEncoded ?? null,
      });
    });
    return out;
  });
}

async function descriptions(page) {
  return page.evaluate(() => {
    const st = window.demo.state;
    const d = (x) => (x ? x.sdp : null);
    return {
      publisherOffer: d(st.pub?.localDescription),
      publisherAnswer: d(st.pub?.remoteDescription),
      subscriberOffer: d(st.sub?.remoteDescription),
      subscriberAnswer: d(st.sub?.localDescription),
      errors: st.errors,
      log: st.log.slice(-10),
    };
  });
}

const result = {};
const killer = setTimeout(() => {
  console.error(`timed out after ${timeoutMs} ms`);
  console.log(`RESULT ${JSON.stringify({ ok: false, checks, timedOut: true })}`);
  process.exit(3);
}, timeoutMs + 15000);
let firefox;
let chrome;
try {
  const host = new URL(url).hostname;
  [firefox, chrome] = await Promise.all([
    puppeteer.launch({
      browser: "firefox",
      protocol: "webDriverBiDi",
      executablePath: firefoxPath,
      headless: true,
      userDataDir: profile,
      timeout: 30000,
      extraPrefsFirefox: {
        // Fake camera and microphone, no permission prompt.
        "media.navigator.streams.fake": true,
        "media.navigator.permission.disabled": true,
        // getUserMedia needs a secure context; the relay serves the page over plain
        // HTTP on a namespace address (deployments put it behind HTTPS).
        "dom.securecontext.allowlist": host,
        "media.devices.insecure.enabled": true,
        "media.getusermedia.insecure.enabled": true,
        "media.autoplay.default": 0,
        "media.autoplay.blocking_policy": 0,
        // Host candidates as addresses, not mDNS names.
        "media.peerconnection.ice.obfuscate_host_addresses": false,
      },
    }),
    chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        `--unsafely-treat-insecure-origin-as-secure=${new URL(url).origin}`,
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      timeout: 30000,
    }),
  ]);
  timings.launchedMs = Date.now() - started;
  result.firefoxVersion = await firefox.version();
  const ff = await firefox.newPage();
  ff.on("console", (m) => {
    if (m.type() === "error") console.error(`[firefox] ${m.text()}`);
  });
  ff.on("pageerror", (e) => console.error(`[firefox page error] ${e}`));
  const ctx = await chrome.newContext({ permissions: ["camera", "microphone"] });
  const cr = await ctx.newPage();
  cr.on("console", (m) => {
    if (m.type() === "error") console.error(`[chromium] ${m.text()}`);
  });
  await Promise.all([ff.goto(url, { timeout: 15000 }), cr.goto(url, { timeout: 15000 })]);
  const room = tokens.room;
  await ff.evaluate((o) => window.demo.join(o), { room, identity: "fox", mode: "sfu", token: tokens.participants[0] });
  await cr.evaluate((o) => window.demo.join(o), { room, identity: "chrome", mode: "sfu", token: tokens.participants[1] });
  timings.joinedMs = Date.now() - started;
  const both = await until(async () => {
    const [f, c] = await Promise.all([received(ff), received(cr)]);
    return videoFrames(f) > 10 && audioAmount(f) > 0 && videoFrames(c) > 10 && audioAmount(c) > 0 ? [f, c] : null;
  }, 40000);
  timings.mediaMs = Date.now() - started;
  const [ffDesc, crDesc] = await Promise.all([descriptions(ff), descriptions(cr)]);
  result.firefoxDescriptions = ffDesc;
  if (captureDir) {
    for (const [k, v] of Object.entries(ffDesc)) {
      if (typeof v === "string") writeFileSync(join(captureDir, `firefox_${k}.sdp`), v);
    }
  }
  const now = both || (await Promise.all([received(ff), received(cr)]));
  check("Firefox and Chromium each decode the other's video and audio", both, {
    firefox: now[0],
    chromium: now[1],
    firefoxErrors: ffDesc.errors,
    firefoxLog: ffDesc.log,
    chromiumErrors: crDesc.errors,
  });
  if (both) {
    await sleep(2500);
    const [f2, c2] = await Promise.all([received(ff), received(cr)]);
    const grew = {
      firefoxVideo: [videoFrames(both[0]), videoFrames(f2)],
      firefoxAudio: [audioAmount(both[0]), audioAmount(f2)],
      chromiumVideo: [videoFrames(both[1]), videoFrames(c2)],
      chromiumAudio: [audioAmount(both[1]), audioAmount(c2)],
    };
    check("both keep decoding (frames and audio counters grow)", Object.values(grew).every(([a, b]) => b > a), grew);
    result.firefoxReceived = f2;
    result.chromiumReceived = c2;
    // Which audio counter each browser fills (webrtc-stats names).
    const audioField = (r) => {
      const a = r.find((x) => x.kind === "audio");
      return a && a.totalAudioEnergy !== null ? "totalAudioEnergy" : a && a.totalSamplesReceived !== null ? "totalSamplesReceived" : null;
    };
    result.audioField = { firefox: audioField(f2), chromium: audioField(c2) };
  }
  // Firefox sends the camera as simulcast only when the SFU's answer accepted its rids
  // (a=simulcast:recv); a second layer starts once its bandwidth estimate allows, which
  // on a loaded machine can be seconds after the first frames: waited for, bounded.
  const sending = (p) => p.filter((x) => x.kind === "video" && x.rid && x.bytesSent > 0).map((x) => x.rid);
  result.firefoxPublished =
    (await until(async () => {
      const p = await published(ff);
      return sending(p).length >= 2 ? p : null;
    }, 15000)) || (await published(ff));
  result.chromiumPublished = await published(cr);
  const layers = sending(result.firefoxPublished);
  check("Firefox sends its camera as simulcast (at least two rids carry media)", layers.length >= 2, result.firefoxPublished);
  await Promise.all([ff.evaluate(() => window.demo.leave()), cr.evaluate(() => window.demo.leave())]);
} catch (e) {
  check("the scenario ran without an exception", false, String(e && e.stack ? e.stack : e));
} finally {
  await Promise.all([firefox?.close().catch(() => {}), chrome?.close().catch(() => {})]);
}
clearTimeout(killer);
result.timings = timings;
result.checks = checks;
result.ok = checks.length > 0 && checks.every((c) => c.ok);
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(result.ok ? 0 : 1);
