#!/usr/bin/env sh
# Installs what mergescope needs on a fresh Debian/Ubuntu machine: a C toolchain, the Vulkan
# loader and Mesa's Vulkan drivers (lavapipe, a software GPU the GPU tests run on; a real GPU
# uses its own driver), the X11/Wayland client libraries the window needs, Xvfb (a test runs
# the real window and sends it Ctrl-C) and, when no
# `cargo` is on PATH, Rust through rustup. Safe to run again.
set -eu

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    build-essential pkg-config ca-certificates curl mesa-vulkan-drivers libvulkan1 \
    libxkbcommon-x11-0 libxkbcommon0 libx11-xcb1 libxcursor1 libxrandr2 libxi6 libgl1 libegl1 \
    xvfb xauth
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "Rust is installed in ~/.cargo/bin; run: . \"\$HOME/.cargo/env\"" >&2
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    echo "Rust installed; open a new shell or run: . \"\$HOME/.cargo/env\"" >&2
  fi
  exit 0
fi

cargo --version
echo "ready: cargo run --release   (the workbench; headless: cargo run --release -- demo; tests: cargo test --workspace)"
