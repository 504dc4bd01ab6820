#!/usr/bin/env bash
# CI's fuzz smoke test: builds every fuzz target, then runs each for a few seconds on its
# committed corpus. Exits non-zero if any target fails to build, crashes, hangs (> 1 s on one
# input), runs out of memory or allocates more than the cap (README.md).
#
#   fuzz/smoke.sh                 # 5 s per target
#   SMOKE_SECONDS=60 fuzz/smoke.sh
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Works on a stable toolchain: RUSTC_BOOTSTRAP=1
# lets it accept the sanitizer-coverage flags cargo-fuzz passes.
set -uo pipefail
cd "$(dirname "$0")"

export RUSTC_BOOTSTRAP=1
seconds="${SMOKE_SECONDS:-5}"
# `none`: coverage instrumentation without AddressSanitizer (the project is safe Rust; the
# allocation cap is enforced by the targets' own allocator, src/lib.rs). `address` works too.
sanitizer="${FUZZ_SANITIZER:-none}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

start=$(date +%s)
if ! cargo fuzz build -s "$sanitizer"; then
  echo "smoke: building the fuzz targets failed" >&2
  exit 1
fi
echo "smoke: built in $(( $(date +%s) - start )) s"

failed=()
for target in $(cargo fuzz list); do
  # New inputs found during the smoke run go to a throw-away folder, not the committed corpus.
  scratch="$(mktemp -d)"
  mkdir -p "artifacts/$target"
  echo "smoke: $target for ${seconds} s"
  if ! "target/$triple/release/$target" "$scratch" "corpus/$target" -dict="dict/$target.dict" \
      -max_total_time="$seconds" -timeout=1 -rss_limit_mb=2048 -malloc_limit_mb=256 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 2> "$scratch.log"; then
    tail -n 60 "$scratch.log" >&2
    failed+=("$target")
  else
    grep -E "^stat::number_of_executed_units|^Done" "$scratch.log" | sed "s/^/smoke: $target: /"
  fi
  rm -rf "$scratch" "$scratch.log"
done

echo "smoke: finished in $(( $(date +%s) - start )) s"
if (( ${#failed[@]} )); then
  echo "smoke: FAILED: ${failed[*]} (reproducers under fuzz/artifacts/)" >&2
  exit 1
fi
