#!/usr/bin/env bash
# Builds the local images the container tests use, from Debian packages only (no registry).
#
#   popbridge/base:bookworm   a minimal Debian bookworm root filesystem (debootstrap
#                             --variant=minbase), `docker import`ed
#   popbridge/<server>:test   one thin image per mail server, `docker build` FROM the base
#                             with images/<server>/Dockerfile (build context: images/, so
#                             every image can copy the shared scripts of images/common/)
#
# Idempotent: each image carries the label `popbridge.hash`, the SHA-256 of this script
# (the base's hash) and, for a server image, of every file under images/common/ and
# images/<server>/. An image whose label matches is kept; anything else is rebuilt. A
# warm run takes about a second.
#
# Usage: containers/build.sh [IMAGE...]   (default: every directory under images/)
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
base=popbridge/base:$suite

hash_of() { # files... -> hex digest of their names and contents
  local f
  for f in "$@"; do printf '%s\0' "${f#"$here"/}"; sha256sum <"$f"; done | sha256sum | cut -d' ' -f1
}

label_of() { # image -> its popbridge.hash label, or nothing
  docker image inspect --format '{{ index .Config.Labels "popbridge.hash" }}' "$1" 2>/dev/null || true
}

base_hash="$(hash_of "$here/build.sh")"
if [ "$(label_of "$base")" != "$base_hash" ]; then
  command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  start=$SECONDS
  root="$(mktemp -d /tmp/popbridge-rootfs.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  echo "build.sh: debootstrap $suite into $root" >&2
  debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # Smaller and quieter images: no caches, no docs, no recommends, no service starts.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90popbridge"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" >"$root/etc/apt/sources.list"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change "LABEL popbridge.hash=$base_hash" \
    --change 'ENV DEBIAN_FRONTEND=noninteractive' \
    --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "build.sh: $base built in $((SECONDS - start)) s" >&2
fi

if [ $# -eq 0 ]; then
  set -- $(cd "$here/images" && for d in */; do [ -f "$d/Dockerfile" ] && echo "${d%/}"; done)
fi
for name in "$@"; do
  dir="$here/images/$name"
  [ -f "$dir/Dockerfile" ] || { echo "build.sh: no $dir/Dockerfile" >&2; exit 1; }
  # The hash of the directory's files (sorted, so it is stable) and of the base.
  mapfile -t files < <(find "$here/images/common" "$dir" -type f | LC_ALL=C sort)
  hash="$(printf '%s\n%s\n' "$base_hash" "$(hash_of "${files[@]}")" | sha256sum | cut -d' ' -f1)"
  tag=popbridge/$name:test
  if [ "$(label_of "$tag")" = "$hash" ]; then
    continue
  fi
  start=$SECONDS
  echo "build.sh: building $tag" >&2
  docker build -q --network host --label "popbridge.hash=$hash" --build-arg "BASE=$base" \
    -t "$tag" -f "$dir/Dockerfile" "$here/images" >"/tmp/popbridge-build-$name.log" 2>&1 \
    || { tail -n 40 "/tmp/popbridge-build-$name.log" >&2; exit 1; }
  echo "build.sh: $tag built in $((SECONDS - start)) s" >&2
done
