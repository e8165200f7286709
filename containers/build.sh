#!/usr/bin/env bash
# Builds the local images the container tests use, from Debian packages only (no registry).
#
#   popbridge/base:bookworm   a minimal Debian bookworm root filesystem (debootstrap
#                             --variant=minbase), `docker import`ed (images/base.sh)
#   popbridge/<server>:test   one thin image per mail server, `docker build` FROM the base
#                             with images/<server>/Dockerfile (build context: images/, so
#                             every image can copy the shared scripts of images/common/)
#   popbridge/poplab:test     poplab (`cargo build -p poplab`, stripped) on the base, for
#                             CI jobs in any language: `docker run --network host -i
#                             popbridge/poplab:test serve FILE`
#
# Idempotent: each image carries the label `popbridge.hash`: for the base the SHA-256 of
# images/base.sh; for the others that and the hash of images/common/ and images/<name>/
# (for poplab: its Dockerfile and the stripped binary). An image whose label matches is
# kept; anything else is rebuilt. A warm run takes about a second (plus, for poplab, the
# cargo build's check).
#
# Usage: containers/build.sh [IMAGE...]   (default: every directory of images/ with a
# Dockerfile). Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
base=popbridge/base:$suite

hash_of() { # files... -> hex digest of their contents, in order
  local f
  for f in "$@"; do sha256sum <"$f"; done | sha256sum | cut -d' ' -f1
}

label_of() { # image -> its popbridge.hash label, or nothing
  docker image inspect --format '{{ index .Config.Labels "popbridge.hash" }}' "$1" 2>/dev/null || true
}

base_hash="$(printf '%s %s\n' "$mirror" "$suite" | cat - "$here/images/base.sh" | sha256sum | cut -d' ' -f1)"
if [ "$(label_of "$base")" != "$base_hash" ]; then
  start=$SECONDS
  echo "build.sh: building $base (debootstrap $suite)" >&2
  "$here/images/base.sh" "$base" "$base_hash" "$mirror" "$suite"
  echo "build.sh: $base built in $((SECONDS - start)) s" >&2
fi

if [ $# -eq 0 ]; then
  set -- $(cd "$here/images" && for d in */; do [ -f "$d/Dockerfile" ] && echo "${d%/}"; done)
fi
context=""
trap '[ -z "$context" ] || rm -rf "$context"' EXIT
for name in "$@"; do
  dir="$here/images/$name"
  [ -f "$dir/Dockerfile" ] || { echo "build.sh: no $dir/Dockerfile" >&2; exit 1; }
  if [ "$name" = poplab ]; then
    # Its own context: the Dockerfile and this checkout's poplab, stripped.
    (cd "$here/.." && cargo build -q -p poplab)
    context="$(mktemp -d /tmp/popbridge-poplab.XXXXXX)"
    mkdir -p "$context/poplab" "$context/bin"
    cp "$dir/Dockerfile" "$context/poplab/"
    strip -o "$context/bin/poplab" "${CARGO_TARGET_DIR:-$here/../target}/debug/poplab"
    files=("$dir/Dockerfile" "$context/bin/poplab")
    ctx="$context"
  else
    mapfile -t files < <(find "$here/images/common" "$dir" -type f | LC_ALL=C sort)
    ctx="$here/images"
  fi
  hash="$(printf '%s\n%s\n' "$base_hash" "$(hash_of "${files[@]}")" | sha256sum | cut -d' ' -f1)"
  tag=popbridge/$name:test
  if [ "$(label_of "$tag")" != "$hash" ]; then
    start=$SECONDS
    echo "build.sh: building $tag" >&2
    log="$(mktemp /tmp/popbridge-build-$name.XXXXXX)"
    docker build -q --network host --label "popbridge.hash=$hash" --build-arg "BASE=$base" \
      -t "$tag" -f "$ctx/$name/Dockerfile" "$ctx" >"$log" 2>&1 \
      || { tail -n 40 "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
    echo "build.sh: $tag built in $((SECONDS - start)) s" >&2
  fi
  [ -z "$context" ] || { rm -rf "$context"; context=""; }
done
