#!/usr/bin/env bash
# Linear merge of a generated Llama-shaped family (base + 3 fine-tunes, bf16, ~1.6 GB each)
# against the I/O floor measured in the same run: reading every input once and writing one
# output of the same size (with fsync, as mergescope syncs before its atomic rename).
#
#   bench/linear-io-floor.sh [DATA_DIR]       (default: ./bench-data, ~8 GB free needed)
#
# Page caches are dropped before each timed step when run as root; otherwise the figures are
# warm-cache figures and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-bench-data}
cargo build --release -p mergescope --quiet
BIN=$PWD/target/release/mergescope
mkdir -p "$DATA"

if [ ! -f "$DATA/family/ft_3/model.safetensors" ]; then
  "$BIN" synth --preset bench1b --finetunes 3 --out "$DATA/family" --force
fi

cat > "$DATA/linear.yml" <<'YML'
merge_method: linear
models:
  - model: family/base
    parameters: {weight: 0.4}
  - model: family/ft_1
    parameters: {weight: 0.2}
  - model: family/ft_2
    parameters: {weight: 0.2}
  - model: family/ft_3
    parameters: {weight: 0.2}
YML

drop_caches() {
  if [ "$(id -u)" = 0 ] && sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    CACHE=cold
  else
    CACHE=warm
  fi
}
seconds() { date +%s.%N; }

inputs=$(find "$DATA/family" -name '*.safetensors' | sort)
out_bytes=$(stat -c %s "$DATA/family/base/model.safetensors")

drop_caches
t0=$(seconds); cat $inputs > /dev/null; t1=$(seconds)
read_s=$(echo "$t1 - $t0" | bc -l)

drop_caches
t0=$(seconds)
dd if=/dev/zero of="$DATA/floor.bin" bs=8M count=$(( (out_bytes + 8388607) / 8388608 )) conv=fsync status=none
t1=$(seconds); rm -f "$DATA/floor.bin"
write_s=$(echo "$t1 - $t0" | bc -l)

drop_caches
( cd "$DATA" && /usr/bin/time -v "$BIN" merge linear.yml --out merged --force ) 2> "$DATA/time.log" > /dev/null
merge_s=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$DATA/time.log")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DATA/time.log")

floor=$(echo "$read_s + $write_s" | bc -l)
printf 'cache:            %s\n' "$CACHE"
printf 'inputs:           %s bytes in 4 models\n' "$(cat $inputs | wc -c)"
printf 'read floor:       %.2f s\n' "$read_s"
printf 'write floor:      %.2f s (%s bytes, fsync)\n' "$write_s" "$out_bytes"
printf 'I/O floor:        %.2f s\n' "$floor"
printf 'mergescope linear: %.2f s, peak RSS %.1f MiB\n' "$merge_s" "$(echo "$rss_kb / 1024" | bc -l)"
printf 'ratio to floor:   %.2f\n' "$(echo "$merge_s / $floor" | bc -l)"
