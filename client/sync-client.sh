#!/usr/bin/env sh
# Copy the browser client from the service into this package. The package holds a copy so that
# `npm pack` / `npm install client/` ship it next to its declarations; run this after changing
# axrisi/static/axrisi-client.js (tests/test_client_package.py fails while the two differ), and
# update axrisi-client.d.ts when an export changes.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
cp "$here/../axrisi/static/axrisi-client.js" "$here/axrisi-client.js"
echo "copied axrisi-client.js into $here"
