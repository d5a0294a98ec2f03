#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another, keeping the corpus
# in fuzz/corpus/<target>. Needs a nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 2>&1 | tail -4
done
