#!/usr/bin/env bash
# Refresh the vendored front-end libraries in axrisi/static/vendor/ from the npm registry, at the
# pinned versions below. No build step and no node_modules: `npm pack` fetches each package's
# published tarball into a temporary directory and we copy the one browser ES module we serve,
# with its licence. To upgrade, change a version here, run this script, read the diff, run the
# browser tests (pytest tests/browser), and update the table in axrisi/static/vendor/README.md.
set -euo pipefail

MARKED_VERSION=18.2.1
DOMPURIFY_VERSION=3.4.18

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/axrisi/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME VERSION -> prints the unpacked package directory
  local name="$1" version="$2" dir="$work/$1"
  mkdir -p "$dir"
  (cd "$dir" && npm pack --silent "$name@$version" >/dev/null 2>&1)
  tar -xzf "$dir"/*.tgz -C "$dir"
  echo "$dir/package"
}

copy() {  # copy SRC DEST, failing loudly when the package layout changed
  if [ ! -f "$1" ]; then
    echo "refresh-vendor: $1 is missing; the package's layout changed" >&2
    exit 1
  fi
  cp "$1" "$2"
}

mkdir -p "$vendor"

marked="$(fetch marked "$MARKED_VERSION")"
copy "$marked/lib/marked.esm.js" "$vendor/marked.esm.js"
copy "$marked/LICENSE" "$vendor/marked.LICENSE"

purify="$(fetch dompurify "$DOMPURIFY_VERSION")"
copy "$purify/dist/purify.es.mjs" "$vendor/purify.es.mjs"
# DOMPurify is "MPL-2.0 OR Apache-2.0": both texts ship with it, and both go next to it here.
copy "$purify/LICENSE" "$vendor/dompurify.LICENSE"
copy "$purify/LICENSE-MPL" "$vendor/dompurify.LICENSE-MPL"

# The files are kept byte for byte as published (their sourceMappingURL comment included, which
# only devtools follows), so anyone can check them against the registry's tarballs.
(cd "$vendor" && sha256sum marked.esm.js purify.es.mjs)
echo "vendored marked $MARKED_VERSION and dompurify $DOMPURIFY_VERSION into $vendor"
