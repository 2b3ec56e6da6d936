#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/README.md) for FUZZ_SECS seconds each (default 600) and
# merges what they found into the checked-in corpora. Needs the nightly toolchain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs="${FUZZ_SECS:-600}"
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd fuzz
for target in event_json avro_decode; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "[fuzz] $target for ${secs} s"
    # A scratch corpus for the run, then a minimising merge into the kept one.
    scratch="$(mktemp -d)"
    cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1
    cargo +nightly fuzz run "$target" "corpus/$target" "$scratch" -- -merge=1 >/dev/null 2>&1
    rm -rf "$scratch"
done
echo "[fuzz] no crash, no panic"
