#!/usr/bin/env bash
# Installs what mirrorfs's demo, tests and benchmarks need on a fresh Debian machine (as
# root). Safe to run again: it installs only what is missing.
#
#   scripts/install-deps.sh            fuse3 (to mount) and the Rust toolchain check
#   scripts/install-deps.sh --test     + the conformance judges (pjdfstest, fsx), a test user,
#                                        iproute2 (network namespaces for partition tests),
#                                        e2fsprogs and mount (a loop-device ext4 to plant rot in),
#                                        acl, rsync and git (the real-tree workloads),
#                                        unshare, systemd-analyze and promtool (service
#                                        and metrics tests)
#   scripts/install-deps.sh --bench    + fio, libfuse's C example source, rclone, rsync and
#                                        b3sum (the peers), e2fsprogs for the slow-disk image,
#                                        ethtool and tc for the emulated WAN
set -euo pipefail

want_test=false
want_bench=false
for arg in "$@"; do
  case "$arg" in
    --test) want_test=true ;;
    --bench) want_bench=true ;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

packages=()
command -v fusermount3 >/dev/null || packages+=(fuse3)
command -v setfattr >/dev/null || packages+=(attr)
if $want_test; then
  command -v ip >/dev/null || packages+=(iproute2)
  command -v mkfs.ext4 >/dev/null || packages+=(e2fsprogs)
  command -v losetup >/dev/null || packages+=(mount)
  command -v setfacl >/dev/null || packages+=(acl)
  command -v rsync >/dev/null || packages+=(rsync)
  command -v git >/dev/null || packages+=(git)
  command -v unshare >/dev/null || packages+=(util-linux)
  command -v systemd-analyze >/dev/null || packages+=(systemd)
  command -v promtool >/dev/null || packages+=(prometheus)
fi
if $want_bench; then
  command -v fio >/dev/null || packages+=(fio)
  [ -f /usr/share/doc/libfuse3-dev/examples/passthrough_ll.c ] || packages+=(libfuse3-dev)
  command -v pkg-config >/dev/null || packages+=(pkg-config)
  command -v gcc >/dev/null || packages+=(gcc)
  command -v rclone >/dev/null || packages+=(rclone)
  command -v mkfs.ext4 >/dev/null || packages+=(e2fsprogs)
  command -v losetup >/dev/null || packages+=(mount)
  command -v rsync >/dev/null || packages+=(rsync)
  command -v ethtool >/dev/null || packages+=(ethtool)
  command -v tc >/dev/null || packages+=(iproute2)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "install-deps: cargo is missing; install Rust (rustup)" >&2; exit 1; }

if $want_test; then
  # pjdfstest switches to these users; Debian has nobody/nogroup, not tests.
  id tests >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin tests
  missing=()
  command -v pjdfstest >/dev/null || missing+=(pjdfstest)
  command -v fsx >/dev/null || missing+=(fsx)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: cargo install ${missing[*]}"
    cargo install --quiet --locked "${missing[@]}"
  fi
fi
if $want_bench && ! command -v b3sum >/dev/null; then
  echo "install-deps: cargo install b3sum"
  cargo install --quiet --locked b3sum
fi
