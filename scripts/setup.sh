#!/usr/bin/env bash
# Installs what building, testing and benchmarking mpaxos needs on a fresh Debian/Ubuntu
# machine: a Rust toolchain with rustfmt and clippy, and a TrueType font for the plots.
# Safe to run again.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs (or your distribution's rustup package)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
# Plots (plotters) lay out text with a TrueType font.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fonts-dejavu-core
  else
    echo "warning: install the DejaVu fonts (fonts-dejavu-core) for benchmark plots" >&2
  fi
fi
