#!/usr/bin/env bash
# buf breaking: protos/ must stay wire- and source-compatible with the given git ref.
# On main itself (CI) the base is the previous commit; a ref without protos/ is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
against="${1:-main}"
buf=tools/node_modules/.bin/buf
if [ "$(git rev-parse HEAD 2>/dev/null)" = "$(git rev-parse "$against" 2>/dev/null)" ]; then
  against="HEAD~1"
fi
if ! git cat-file -e "$against:buf.yaml" 2>/dev/null || ! git cat-file -e "$against:protos" 2>/dev/null; then
  echo "buf breaking: $against has no protos/ to compare with; skipped"
  exit 0
fi
"$buf" breaking --against ".git#ref=$(git rev-parse "$against")"
echo "buf breaking: no breaking change against $against"
