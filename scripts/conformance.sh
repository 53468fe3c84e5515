#!/usr/bin/env bash
# Runs the external judges against a mounted filesystem:
#   - pjdfstest (the POSIX suite, crates.io `pjdfstest`), from MOUNTPOINT, switching to the
#     users nobody and tests, with a directory on /dev/shm for its cross-filesystem cases;
#   - fsx (the File System eXerciser, crates.io `fsx`), FSX_OPS operations (default 100000).
# The mount needs allow_other (pjdfstest acts as other users). Prints both counts; exits
# non-zero if pjdfstest reports a failure or fsx finds a difference. PJDFSTEST=0 runs fsx
# alone (for configurations that change only how file data is served), FSX=0 pjdfstest
# alone; KEEP=1 leaves what the judges made in place (for comparing replicas after them).
#
#   scripts/conformance.sh MOUNTPOINT
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: scripts/conformance.sh MOUNTPOINT" >&2
  exit 2
fi
mountpoint=$(cd "$1" && pwd)
ops=${FSX_OPS:-100000}
work=$(mktemp -d /tmp/mirrorfs-conformance.XXXXXX)
secondary=$(mktemp -d /dev/shm/mirrorfs-conformance.XXXXXX)
trap 'rm -rf "$work" "$secondary"' EXIT
chmod 755 "$work" "$secondary"

cat > "$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML

summary="Summary: 0 failed (pjdfstest not run)"
if [ "${PJDFSTEST:-1}" != 0 ]; then
  suite="$mountpoint/pjdfstest.$$"
  mkdir "$suite"
  chmod 755 "$suite"
  echo "conformance: pjdfstest in $suite"
  (cd "$suite" && pjdfstest -c "$work/pjdfstest.toml" -p "$suite" -s "$secondary") > "$work/pjdfstest.out" 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$suite"
  grep -E -A 8 "FAILED" "$work/pjdfstest.out" || true
  summary=$(grep '^Summary:' "$work/pjdfstest.out" || true)
  echo "conformance: pjdfstest $summary"
fi

fsx_status=0
if [ "${FSX:-1}" != 0 ]; then
  echo "conformance: fsx, $ops operations"
  (cd "$mountpoint" && fsx -N "$ops" -S 1 -P "$work" "fsx.$$") > "$work/fsx.out" 2>&1 || fsx_status=$?
  [ "${KEEP:-0}" = 1 ] || rm -f "$mountpoint/fsx.$$"
  tail -n 3 "$work/fsx.out"
  echo "conformance: fsx exit $fsx_status"
fi

failed=$(sed -n 's/^Summary: \([0-9]*\) failed.*/\1/p' <<<"$summary")
if [ -z "$failed" ]; then
  echo "conformance: pjdfstest did not finish" >&2
  tail -n 20 "$work/pjdfstest.out" >&2
  exit 1
fi
[ "$failed" -eq 0 ] && [ "$fsx_status" -eq 0 ]
