#!/usr/bin/env bash
# Builds the Atoll binaries and the disk image target/atoll/atoll.raw.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p atoll-init -p atoll-runtime -p atoll-updater -p image-build -p qemu-tests
target/release/image-build disk "$@"
