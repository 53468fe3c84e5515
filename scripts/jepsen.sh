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
grep -ho 'failover after [a-z]* [a-z0-9]*[a-z ]*: [0-9.]* s' "$out"/seed-*.log |
  sed -E 's/failover after (kill|isolate|cut) [a-z0-9]+( from replicas)?: ([0-9.]+) s/\1\2 \3/' |
  sort -k1,1 |
  awk '{key = $1; if (NF == 4) key = key " from replicas"; v[key] = v[key] " " $NF}
       END {for (k in v) {n = split(v[k], a, " "); asort(a);
            printf "  %-20s n=%-4d median %.2f  p90 %.2f  max %.2f\n", k, n, a[int((n + 1) / 2)], a[int(n * 0.9 + 0.5)], a[n]}}'
[ "$passed" -eq "$total" ]
