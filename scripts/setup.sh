#!/usr/bin/env bash
# Installs what building and testing mpaxos needs on a fresh Debian/Ubuntu machine:
# a Rust toolchain with rustfmt and clippy. Safe to run again.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs (or your distribution's rustup package)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
