#!/usr/bin/env bash
# The base image's recipe (run by build.sh; its hash is the base's label): a minimal
# Debian root filesystem made with debootstrap, `docker import`ed as $1.
# Usage: images/base.sh TAG LABEL MIRROR SUITE
set -euo pipefail
tag=$1 label=$2 mirror=$3 suite=$4
command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
root="$(mktemp -d /tmp/popbridge-rootfs.XXXXXX)"
trap 'rm -rf "$root" "$root.log"' EXIT
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -n 30 "$root.log" >&2; exit 1; }
# Smaller and quieter images: no caches, no recommends, no service starts.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90popbridge"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" >"$root/etc/apt/sources.list"
tar -C "$root" --numeric-owner -c . | docker import \
  --change "LABEL popbridge.hash=$label" \
  --change 'ENV DEBIAN_FRONTEND=noninteractive' \
  --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
