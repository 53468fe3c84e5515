#!/usr/bin/env bash
# The main job on its embedded default: installs what is missing, builds mirrorfs, starts a
# replica node on this machine (copies in /var/tmp/mirrorfs-demo/replicas), mounts the demo
# volume of mount-configs/demo.toml (origin /var/tmp/mirrorfs-demo/origin at
# /var/tmp/mirrorfs-demo/mnt), shows files going through it and arriving on the replica,
# and ends by verifying that the replica holds exactly what the primary holds (a quick
# check, then a content check). Unmounts and stops the node at the end unless --keep is
# given.
#
#   scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/install-deps.sh
cargo build --release --locked --quiet
mirrorfs="$PWD/target/release/mirrorfs"
config="$PWD/mount-configs/demo.toml"
demo=/var/tmp/mirrorfs-demo
mkdir -p "$demo/origin" "$demo/mnt" "$demo/replicas"
if grep -q " $demo/mnt " /proc/self/mountinfo; then
  "$mirrorfs" unmount "$demo/mnt"
fi
[ -f "$demo/origin/README.txt" ] || echo "This file was already in the origin." > "$demo/origin/README.txt"
[ -s "$demo/demo.key" ] || "$mirrorfs" keygen > "$demo/demo.key"

"$mirrorfs" replica serve --listen 127.0.0.1:7071 --dir "$demo/replicas" \
  --volume "demo=$demo/demo.key" 2>"$demo/node.log" &
node=$!
for _ in $(seq 100); do
  grep -q "replica node serving" "$demo/node.log" && break
  kill -0 "$node" 2>/dev/null || { cat "$demo/node.log" >&2; exit 1; }
  sleep 0.1
done

"$mirrorfs" mount --foreground --config "$config" 2>"$demo/daemon.log" &
daemon=$!
for _ in $(seq 100); do
  grep -q " $demo/mnt .* fuse.mirrorfs " /proc/self/mountinfo && break
  kill -0 "$daemon" 2>/dev/null || { cat "$demo/daemon.log" >&2; kill "$node"; exit 1; }
  sleep 0.1
done
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; eval "$*"; }

echo "mirrorfs serves $demo/origin at $demo/mnt (daemon pid $daemon),"
echo "replicated to a node on 127.0.0.1:7071 (pid $node) keeping its copy in $demo/replicas/demo/data"
say "cat $demo/mnt/README.txt"
say "echo 'written through the mount' > $demo/mnt/hello.txt"
say "cat $demo/origin/hello.txt"
say "mkdir -p $demo/mnt/photos && seq 1 100000 > $demo/mnt/photos/numbers.txt"
say "mv $demo/mnt/photos/numbers.txt $demo/mnt/photos/renamed.txt"
say "ls -li $demo/mnt/photos $demo/origin/photos"
say "sha256sum $demo/mnt/photos/renamed.txt $demo/origin/photos/renamed.txt"
say "grep fuse.mirrorfs /proc/self/mountinfo"
say "$mirrorfs log --config $config | tail -n 6"
# sync FILE is fsync(2): with acks = "all" it returns once the replica holds the file.
say "echo 'on two machines once fsync returns' > $demo/mnt/durable.txt && sync $demo/mnt/durable.txt"
say "cat $demo/replicas/demo/data/durable.txt"
say "sha256sum $demo/replicas/demo/data/photos/renamed.txt $demo/replicas/demo/data/README.txt"
say "$mirrorfs status --config $config"
say "$mirrorfs replica status --dir $demo/replicas"
# verify: a quick check compares both copies' metadata and stored hashes (the daemon runs
# it); exit 0 means identical.
say "$mirrorfs verify --config $config"

if $keep; then
  say "$mirrorfs verify --config $config --content"
  echo
  echo "Still mounted. Unmount with: $mirrorfs unmount $demo/mnt"
  echo "The replica node runs as pid $node; stop it with: kill $node"
else
  say "$mirrorfs unmount $demo/mnt"
  wait "$daemon"
  # Unmounted, verify opens the volume itself. A content check reads every file on each
  # side (only hashes cross the network) and names any byte range that differs.
  say "$mirrorfs verify --config $config --content"
  kill "$node"
  wait "$node" || true
  echo
  echo "Unmounted and the node stopped; the files stay in $demo/origin, the copy in $demo/replicas/demo/data."
fi
