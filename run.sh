#!/usr/bin/env bash
# Quick start 1/2: install the build's Debian packages, build the disk image,
# boot it under QEMU with the console on this terminal (Ctrl-A X quits).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
scripts/build-image.sh
exec target/release/qemu-tests run "$@"
