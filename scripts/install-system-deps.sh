#!/usr/bin/env bash
# Debian packages the test tiers need: bcc (python3-bpfcc + libbpfcc) and
# bpftool for the live tier; QEMU, a static busybox, iproute2 (vdpa, the realvm taps), make
# and gcc-12 (the lab kernel's compiler, for its test module) with libc6-dev (the realvm
# guests' static tool) for the vmlab tier
# (which fetches the stock kernel itself with apt-get download); Prometheus
# (with promtool), curl and openssl for the system tier's exporter tests. Installs
# only what is missing; needs root for that.
set -euo pipefail
pkgs=(python3-bpfcc libbpfcc bpftool qemu-system-x86 busybox-static iproute2 prometheus curl openssl tmux make gcc-12 libc6-dev)
# `install-system-deps.sh bench`: also the peers and loads make bench compares against
[ "${1:-}" = bench ] && pkgs+=(fio bpftrace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "vtrace: missing Debian packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
