#!/usr/bin/env sh
# Copy the browser client from the service into this extension. A copy is committed so that the
# folder loads unpacked as it is; run this after changing axrisi/static/axrisi-client.js (a test
# in tests/browser fails while the two differ).
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
cp "$here/../../axrisi/static/axrisi-client.js" "$here/axrisi-client.js"
echo "copied axrisi-client.js into $here"
