#!/usr/bin/env bash
# Idempotent set-up of everything the relay's build and tests need on a fresh machine
# of the project's kind (Debian, root, rustup with stable + nightly preinstalled).
#
# Each step checks first and does nothing when its result is already there, so a second
# run takes a second or two. Called by `cargo xtask setup`, `cargo xtask run` and
# `cargo xtask test`; safe to run by hand.
#
# Environment:
#   RELAY_TOOLS   where bpf-linker's libLLVM links live (default /opt/relay-tools)
#   SETUP_FUZZ=1  also install cargo-fuzz (used by `cargo xtask fuzz`)
#   SETUP_MINIMAL=1  only what `relay run` needs to build (no test packages)
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

RELAY_TOOLS="${RELAY_TOOLS:-/opt/relay-tools}"
APT_PACKAGES=(coturn bpftool iproute2 ethtool clang libclang-rt-14-dev chromium firefox-esr libssl-dev pkg-config)
[ "${SETUP_MINIMAL:-0}" = 1 ] && APT_PACKAGES=(iproute2 libssl-dev pkg-config)

command -v rustup >/dev/null || die "rustup is not installed; this project needs rustup with the stable and nightly toolchains"
rustup toolchain list | grep -q '^nightly' || die "the nightly toolchain is missing (rustup toolchain list); it cannot be fetched here, ask for a machine of the project's kind"

# 1. Debian packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to install Debian packages: ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # coturn's package starts a system turnserver on 3478; the tests run their own.
  if dpkg-query -W coturn >/dev/null 2>&1; then
    systemctl disable --now coturn >/dev/null 2>&1 || true
    pkill -x turnserver >/dev/null 2>&1 || true
  fi
fi

# 2. rust-src for the nightly (eBPF needs -Z build-std=core).
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain nightly >/dev/null
fi

# 3. bpf-linker, built against the nightly's own libLLVM (prebuilt downloads are unreachable).
NIGHTLY_LIB="$(rustc +nightly --print sysroot)/lib"
LLVM_MAJOR="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ -n "$LLVM_MAJOR" ] || die "could not read the nightly's LLVM version from 'rustc +nightly -vV'"
SO="$(ls "$NIGHTLY_LIB" | grep -E '^libLLVM\.so\.[0-9]' | head -n1 || true)"
[ -n "$SO" ] || die "no libLLVM.so.* in $NIGHTLY_LIB: the nightly lacks its shared LLVM"
need_linker=1
if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version >/dev/null 2>&1 \
   && [ -e "$RELAY_TOOLS/lib/$SO" ]; then
  need_linker=0
fi
if [ "$need_linker" = 1 ]; then
  log "building bpf-linker against LLVM $LLVM_MAJOR ($SO); about a minute"
  mkdir -p "$RELAY_TOOLS/lib"
  ln -sf "$NIGHTLY_LIB/$SO" "$RELAY_TOOLS/lib/libLLVM.so"
  ln -sf "$NIGHTLY_LIB/$SO" "$RELAY_TOOLS/lib/$SO"
  LLVM_PREFIX="$RELAY_TOOLS" cargo +stable install --locked bpf-linker \
    --no-default-features --features "llvm-$LLVM_MAJOR" --quiet
  bpf-linker --version >/dev/null || die "bpf-linker was installed but does not run"
fi

# 4. bpffs, for pinning maps and programs.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || log "warning: could not mount bpffs at /sys/fs/bpf; pinning will be unavailable"
  else
    log "warning: bpffs is not mounted and we are not root; pinning will be unavailable"
  fi
fi

# 5. playwright-core and puppeteer-core for the browser tests (tests/browser), pinned by
#    its package-lock.json. They drive Debian's /usr/bin/chromium and /usr/bin/firefox-esr
#    (puppeteer-core over WebDriver BiDi): no browser is downloaded.
BROWSER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
if [ "${SETUP_MINIMAL:-0}" != 1 ] && [ -f "$BROWSER_DIR/package-lock.json" ]; then
  command -v npm >/dev/null || die "npm is missing: the Chromium TURN test needs Node.js and npm (the machine's Node.js)"
  stamp="$BROWSER_DIR/node_modules/.package-lock.json"
  if [ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ] \
     || [ ! -f "$BROWSER_DIR/node_modules/puppeteer-core/package.json" ] \
     || [ "$BROWSER_DIR/package-lock.json" -nt "$stamp" ]; then
    log "installing playwright-core and puppeteer-core in tests/browser (npm ci)"
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1 \
      npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
fi

# 6. cargo-fuzz (optional).
if [ "${SETUP_FUZZ:-0}" = 1 ] && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo +stable install --locked cargo-fuzz --quiet
fi

log "ready"
