#!/usr/bin/env bash
# Builds a fuzz target of fuzz/ with libFuzzer's coverage instrumentation on
# stable Rust (no cargo-fuzz, no nightly) and runs it for SECONDS.
#
#   scripts/fuzz.sh TARGET SECONDS      e.g. scripts/fuzz.sh config 30
#
# The corpus starts from fuzz/corpus/TARGET (if any) and, for `config`, the
# files in configs/, copied to a temporary directory so the repo's seeds
# stay as they are. A crash leaves its input in target/fuzz/artifacts/TARGET/
# and makes this script exit non-zero. See fuzz/README.md.
set -euo pipefail

if [[ $# -ne 2 || ! $2 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
    echo "$0: no fuzz target fuzz/fuzz_targets/$target.rs" >&2
    exit 2
fi

# The flags cargo-fuzz passes (minus the sanitizer, which needs nightly).
# An explicit --target keeps them off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$root/target/fuzz"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" --bin "$target"
binary="$CARGO_TARGET_DIR/$host/release/$target"

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
if [[ -d fuzz/corpus/$target ]]; then
    cp -r "fuzz/corpus/$target/." "$corpus/"
fi
if [[ $target == config ]]; then
    cp configs/*.toml configs/*.yaml "$corpus/"
fi
artifacts="$CARGO_TARGET_DIR/artifacts/$target"
mkdir -p "$artifacts"

echo "fuzzing $target for ${seconds}s (corpus $corpus, crashes to $artifacts/)"
# libFuzzer exits non-zero on a crash, a leak or a timeout; pass that on.
"$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$corpus"
