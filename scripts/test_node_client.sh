#!/usr/bin/env bash
# Runs the Node client's tests (clients/node) against the live stack: `tuneforge up` with a
# temporary TUNEFORGE_HOME on free ports (object store + four services), `npm ci && npm test`
# with the services' addresses in TUNEFORGE_*_TARGET, then `tuneforge down`.
#
# Usage: scripts/test_node_client.sh   (from anywhere; needs `make setup` done: .venv + Node 20)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tuneforge="$root/.venv/bin/tuneforge"
py="$root/.venv/bin/python"

TUNEFORGE_HOME=$(mktemp -d /tmp/tuneforge-node-test.XXXXXX)
export TUNEFORGE_HOME

stop_stack() {
  echo "== $(date -u +%T) tuneforge down"
  "$tuneforge" down --grace 10 >/dev/null 2>&1 || true
  if [ "${KEEP_HOME:-}" = "1" ]; then
    echo "stack home kept: $TUNEFORGE_HOME"
  else
    rm -rf "$TUNEFORGE_HOME"
  fi
}
trap stop_stack EXIT

# Free ports for the four services and the object store's ten, so that this never collides with
# a stack already running on the default ports (a developer's `tuneforge up`, another test run).
eval "$("$py" - <<'PY'
import json, socket
from services.common.object_store_server import free_port_set

store = free_port_set()
held = []
for name in ("datasets", "training", "conversion", "inference"):
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port not in store.values():
            break
        s.close()
    held.append(s)  # kept bound until all are chosen, so that no two are the same
    print(f"export TUNEFORGE_{name.upper()}_PORT={port}")
print(f"export TUNEFORGE_STORE_PORTS='{json.dumps(store)}'")
PY
)"
for name in DATASETS TRAINING CONVERSION INFERENCE; do
  port_var="TUNEFORGE_${name}_PORT"
  export "TUNEFORGE_${name}_TARGET=127.0.0.1:${!port_var}"
done

# DeepSpeed's CPU kernels (shm_comm) are compiled on a training job's first run and cached in
# $TUNEFORGE_HOME/cache/torch_extensions: about 100 s on two cores. Share the cache that the
# Python tests use (tests/test_worker.py), so that only the first run on a machine pays it.
extensions="${TUNEFORGE_EXTENSIONS_CACHE:-$HOME/.cache/tuneforge/torch_extensions}"
mkdir -p "$extensions" "$TUNEFORGE_HOME/cache"
ln -s "$extensions" "$TUNEFORGE_HOME/cache/torch_extensions"

echo "== $(date -u +%T) tuneforge up (home $TUNEFORGE_HOME)"
# The S3 endpoint must come from the embedded store, not from the caller's environment.
unset TUNEFORGE_S3_ENDPOINT
if ! "$tuneforge" up --timeout 180; then
  for log in "$TUNEFORGE_HOME"/logs/*.log; do echo "--- $log"; tail -n 30 "$log"; done
  exit 1
fi

echo "== $(date -u +%T) npm ci && npm test (clients/node)"
cd clients/node
npm ci --no-audit --no-fund --loglevel=error
status=0
npm test || status=$?
if [ "$status" -ne 0 ]; then
  for log in "$TUNEFORGE_HOME"/logs/*.log; do echo "--- $log"; tail -n 30 "$log"; done
fi
exit "$status"
