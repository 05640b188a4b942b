#!/usr/bin/env bash
# Quick start 2/2: every check and test: formatting, clippy, unit tests and
# the QEMU integration tests against a freshly built image.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
echo "== format and lints"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== image"
scripts/build-image.sh
echo "== unit and integration tests"
# QEMU guests are CPU-bound under TCG: two at a time on a two-core machine.
cargo test --locked --workspace -- --test-threads=2
echo "== the DHCP client against dnsmasq (root: network namespaces)"
cargo test --locked -p atoll-init --lib net::peer_tests -- --ignored
echo "== fuzzing: the config parser, update metadata, grubenv, layer unpacking"
scripts/fuzz.sh config 30
scripts/fuzz.sh update_metadata 20
scripts/fuzz.sh grubenv 20
scripts/fuzz.sh unpack 20
