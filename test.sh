#!/usr/bin/env bash
# Quick start 2/2: every check and test: formatting, clippy, unit tests and
# the QEMU integration tests against a freshly built image.
set -euo pipefail
cd "$(dirname "$0")"
# Each section's header says how far into the run it starts (m:ss), so a
# slow step shows in the log.
section() { printf '== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
section "build dependencies"
scripts/install-deps.sh
section "format and lints"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
section "image"
scripts/build-image.sh
section "unit and integration tests"
# QEMU guests are CPU-bound under TCG: two at a time on a two-core machine.
cargo test --locked --workspace -- --test-threads=2
section "the DHCP client against dnsmasq (root: network namespaces)"
cargo test --locked -p atoll-init --lib net::peer_tests -- --ignored
section "fuzzing: the config parser, update metadata, grubenv, layer unpacking"
scripts/fuzz.sh config 30
scripts/fuzz.sh update_metadata 20
scripts/fuzz.sh grubenv 20
scripts/fuzz.sh unpack 20
section "all passed"
