//! The SFU with Firefox: headless Debian firefox-esr (driven by puppeteer-core over
//! WebDriver BiDi) and headless Chromium join one room through the relay's own demo page
//! (`tests/browser/sfu_firefox.mjs`); each decodes the other's video and audio.
//!
//! Firefox writes its SDP differently from Chromium (simulcast with `a=simulcast:send`
//! and its own extension numbering, a different codec list); this is the test that our
//! answers and offers are accepted by it and that its media is forwarded.
//!
//! The relay runs in the relay namespace of a [`TurnTopology`], node and the browsers in
//! the client namespace. Firefox gets a fresh profile in a temporary directory (removed
//! when the test ends, passing or not). Skips with a printed reason when firefox-esr is
//! missing, except under CI (`CI=true`), where setup installs it and the test must run.
//! `SFU_FIREFOX_CAPTURE=<dir>` keeps the SDP Firefox exchanged there (for fixtures).
//!
//! What Firefox ESR 153 does here: it sends the camera as three-rid simulcast (`a=rid`
//! send lines, `a=simulcast:send q;h;f`, the standard rtp-stream-id and
//! repaired-rtp-stream-id extensions, plus `a=ssrc` lines and FID groups for all six
//! SSRCs), its video section `bundle-only` with port 0; it answers our subscriber offer
//! with VP8 only (no H.264 without the OpenH264 plugin, which Debian's package does not
//! ship), and fills `totalAudioEnergy` like Chromium.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, path::Path, time::Duration};

use relay::signaling::{Claims, sign};
use relay_e2e::{
    CHROMIUM, Daemon, TempDir, TurnTopology, browser_dir, browser_result,
    check_browser_prerequisites, require_root, run_bounded, sfu_diagnostics, start_signaling_relay,
};

const SECRET: &str = "sfu-firefox-signing-secret-0123456789";
const SIGNALING_PORT: u16 = 8080;
const MEDIA_PORT: u16 = 3479;
/// Debian's firefox-esr (`cargo xtask setup` installs it).
const FIREFOX: &str = "/usr/bin/firefox-esr";

fn token(room: &str, identity: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    sign(
        &Claims {
            room: room.into(),
            identity: identity.into(),
            exp,
            p2p: false,
        },
        SECRET.as_bytes(),
    )
    .unwrap()
}

fn start_relay(topo: &TurnTopology, files: &TempDir) -> Daemon {
    let ip = topo.relay_client_v4;
    let toml = format!(
        r#"[server]
listen = ["{ip}:3478"]
workers = 2

[xdp]
enabled = false

[turn]
enabled = false

[policy]
allow = ["10.201.0.0/16"]

[sfu]
enabled = true
signaling_listen = "{ip}:{SIGNALING_PORT}"
media_listen = "{ip}:{MEDIA_PORT}"
token_secrets = ["{SECRET}"]
create_rooms = false
rooms = ["mixed"]
"#
    );
    start_signaling_relay(
        &topo.relay,
        files,
        &toml,
        SocketAddr::new(ip.into(), SIGNALING_PORT),
    )
}

#[test]
fn sfu_firefox_and_chromium_exchange_media() {
    if !require_root("sfu_firefox_and_chromium_exchange_media") {
        return;
    }
    if !Path::new(FIREFOX).exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "{FIREFOX} is missing under CI: `cargo xtask setup` installs firefox-esr"
        );
        eprintln!(
            "skipping sfu_firefox_and_chromium_exchange_media: {FIREFOX} is missing (install Debian's firefox-esr: `cargo xtask setup`)"
        );
        return;
    }
    check_browser_prerequisites();
    assert!(
        browser_dir().join("node_modules/puppeteer-core").exists(),
        "puppeteer-core is not installed in {}: run `cargo xtask setup` (npm ci there)",
        browser_dir().display()
    );
    let topo = TurnTopology::new("rff").expect("create the topology");
    let files = TempDir::new("relay-sfu-firefox").unwrap();
    let profile = files.path().join("firefox-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let relay = start_relay(&topo, &files);
    let url = format!("http://{}:{SIGNALING_PORT}/", topo.relay_client_v4);
    let tokens = serde_json::json!({
        "room": "mixed",
        "participants": [token("mixed", "fox"), token("mixed", "chrome")],
    });
    let mut cmd = topo.client.command("node");
    cmd.arg(browser_dir().join("sfu_firefox.mjs"))
        .args(["--url", &url, "--tokens", &tokens.to_string()])
        .arg("--profile")
        .arg(&profile)
        .args(["--firefox", FIREFOX, "--chromium", CHROMIUM])
        .args(["--timeout-ms", "120000"])
        .current_dir(browser_dir());
    if let Some(dir) = std::env::var_os("SFU_FIREFOX_CAPTURE") {
        cmd.arg("--capture-dir").arg(dir);
    }
    // Firefox as root: its home must be writable and its own (the profile dir is given).
    cmd.env("HOME", files.path()).env("MOZ_HEADLESS", "1");
    let out = run_bounded(&mut cmd, Duration::from_secs(150))
        .expect("run node (is nodejs installed? `cargo xtask setup`)");
    let text = out.text();
    let diag = || sfu_diagnostics(&relay);
    let result = browser_result(&text, out.status, &diag);
    eprintln!(
        "Firefox {} published {}\nFirefox received {}\nChromium published {}\nChromium received {}\naudio counters: {}\ntimings: {}",
        result["firefoxVersion"],
        result["firefoxPublished"],
        result["firefoxReceived"],
        result["chromiumPublished"],
        result["chromiumReceived"],
        result["audioField"],
        result["timings"]
    );
    let stats = relay.stats().unwrap();
    assert!(
        stats["sfu"]["rtp_out"].as_u64().unwrap_or(0) > 200,
        "the relay's SFU counters do not show the forwarding: {}",
        stats["sfu"]
    );
    relay.stop_cleanly();
}
