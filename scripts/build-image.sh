#!/usr/bin/env bash
# Builds the Atoll binaries and the disk image target/atoll/atoll.raw.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p atoll-runtime -p atoll-updater -p image-build -p qemu-tests
cargo build --release --locked -p atoll-init --bin atollctl
# PID 1 is linked statically (glibc's static-pie): its exec after the switch
# root then reads no loader or libc from the slot's squashfs (docs/boot.md).
# `cargo rustc` gives the flag to this one binary; as a RUSTFLAGS it would
# also reach the proc-macro crates, which cannot link statically.
cargo rustc --release --locked -p atoll-init --bin init -- -C target-feature=+crt-static
target/release/image-build disk "$@"
