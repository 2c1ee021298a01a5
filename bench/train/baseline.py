"""The baseline: a plain transformers Trainer + PEFT LoRA script on the same chat rows.

    python bench/train/baseline.py --model HF_DIR --data train.jsonl --out result.json \
        --steps 30 --batch-size 4 --max-seq-len 256 --lr 2e-4 --lora-rank 16 --lora-alpha 32

Each row is rendered with the model's chat template (`AutoTokenizer.apply_chat_template`); the
labels are the assistant replies only (their content through the `<|im_end|>` after it), found
by rendering the conversation up to each reply. Batches are padded to their longest row
(`DataCollatorForSeq2Seq`). fp32 on the CPU, no evaluation, no saving, no reporting.

It writes a JSON result: phase times (seconds since --t0, the wall clock time its parent started
it), the non-pad input tokens and the trained (label) tokens fed to the model over all steps,
and totals over the whole data set for the parent's tokenization check.
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

IGNORE_INDEX = -100


def encode(tok: Any, messages: list[dict[str, Any]], max_len: int, end_id: int) -> dict[str, Any]:
    def render(msgs: list[dict[str, Any]], prompt: bool = False) -> list[int]:
        return list(
            tok.apply_chat_template(
                msgs, tokenize=True, add_generation_prompt=prompt, return_dict=False
            )
        )

    ids = render(messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(messages[:i], prompt=True))
        end = len(render(messages[: i + 1]))
        while end > start and ids[end - 1] != end_id:  # not the newline after <|im_end|>
            end -= 1
        labels[start:end] = ids[start:end]
    ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("baseline-out"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument(
        "--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t0", type=float, default=T_START)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    phases = {"process_start": T_START - args.t0, "imports": time.time() - args.t0}

    tok = AutoTokenizer.from_pretrained(args.model)
    end_id = int(tok.convert_tokens_to_ids("<|im_end|>"))  # type: ignore[arg-type]
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8") if line.strip()]
    encoded = [encode(tok, row["messages"], args.max_seq_len, end_id) for row in rows]
    encoded = [e for e in encoded if any(x != IGNORE_INDEX for x in e["labels"][1:])]
    train = Dataset.from_list(encoded)
    phases["data"] = time.time() - args.t0

    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    base.config.use_cache = False
    model = get_peft_model(
        base,
        LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=args.targets.split(","),
            task_type="CAUSAL_LM",
        ),
    )
    phases["model"] = time.time() - args.t0

    counts = {"tokens": 0, "trained_tokens": 0, "micro_batches": 0}

    class CountingTrainer(Trainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            counts["tokens"] += int(inputs["attention_mask"].sum())
            counts["trained_tokens"] += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            counts["micro_batches"] += 1
            return super().training_step(model, inputs, num_items_in_batch)

    step_ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_ends.append(time.time() - args.t0)

    training_args = TrainingArguments(
        output_dir=str(args.work),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_cpu=True,
        bf16=False,
        fp16=False,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, args.steps),
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=args.seed,
    )
    trainer = CountingTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(
            tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
        ),
        callbacks=[StepTimes()],
    )
    phases["train_start"] = time.time() - args.t0
    result = trainer.train()
    phases["train_end"] = time.time() - args.t0

    out = {
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "torch_threads": torch.get_num_threads(),
        "rows": len(rows),
        "examples": len(encoded),
        "data_tokens": sum(len(e["input_ids"]) for e in encoded),
        "data_trained_tokens": sum(
            sum(1 for x in e["labels"][1:] if x != IGNORE_INDEX) for e in encoded
        ),
        "phases": phases,
        "step_ends": step_ends,
        **counts,
    }
    phases["end"] = time.time() - args.t0
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
