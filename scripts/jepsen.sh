#!/usr/bin/env bash
# Many seeds of the Jepsen-style run of automatic failover (tests/jepsen.rs): each seed is
# its own test process (a failure stops no other seed), SHARDS of them side by side on
# their own subnets. Printed: each seed's verdict and writes, then the totals and the
# failover times (last acknowledged write before each fault on the primary to the first
# after it) by fault. Failing seeds keep their directories (logs, copies) in /tmp.
#
#   scripts/jepsen.sh [FIRST] [LAST] [SECONDS] [SHARDS]    (defaults 1 200 30 2)
set -uo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}
last=${2:-200}
seconds=${3:-30}
shards=${4:-2}
scripts/install-deps.sh
cargo test --release --locked --test jepsen --no-run --quiet || exit 1
out=$(mktemp -d /tmp/mirrorfs-jepsen-XXXXXX)
echo "seeds $first to $last, $seconds s of faults each, $shards at a time; output in $out"

run_shard() {
  local shard=$1 seed
  for ((seed = first + shard; seed <= last; seed += shards)); do
    if MIRRORFS_LAN_SUBNET=$((100 + shard * 20)) JEPSEN_SEEDS=$seed JEPSEN_SECONDS=$seconds \
      JEPSEN_KEEP_FAILED=1 cargo test --release --locked --quiet --test jepsen \
      acknowledged_writes -- --nocapture \
      >"$out/seed-$seed.log" 2>&1; then
      echo "seed $seed: passed, $(grep -o '[0-9]* acknowledged writes' "$out/seed-$seed.log" | tail -1)"
    else
      echo "seed $seed: FAILED (see $out/seed-$seed.log)"
    fi
  done
}

for ((shard = 0; shard < shards; shard++)); do
  run_shard "$shard" &
done
wait

passed=$(grep -l "passed:" "$out"/seed-*.log | wc -l)
total=$((last - first + 1))
writes=$(grep -ho 'passed: [0-9]*' "$out"/seed-*.log | awk '{s += $2} END {print s + 0}')
echo "passed $passed of $total seeds; $writes acknowledged writes checked"
echo "failover times by fault (seconds; a fault within another's failover shares its end):"
cat "$out"/seed-*.log | python3 -c '
import re, sys
times = {}
for line in sys.stdin:
    m = re.search(r"failover after (kill|isolate|cut) \S+( from replicas)?: ([0-9.]+) s", line)
    if m:
        times.setdefault(m.group(1) + (m.group(2) or ""), []).append(float(m.group(3)))
for fault, values in sorted(times.items()):
    values.sort()
    n = len(values)
    print(f"  {fault:<20} n={n:<4} median {values[(n - 1) // 2]:.2f}  p90 {values[min(n - 1, int(n * 0.9))]:.2f}  max {values[-1]:.2f}")
'
[ "$passed" -eq "$total" ]
