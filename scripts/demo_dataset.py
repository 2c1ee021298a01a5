"""Writes the demo's small chat dataset: paraphrased questions about a fictional product whose
answers a base model cannot know, so a short LoRA run visibly teaches them.

    python scripts/demo_dataset.py OUT.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

FACTS = [
    ("Which port does the Zephyr-9 router use for its admin page?", "Port 8642."),
    ("What colour is the Zephyr-9 status light when it is updating?", "Amber, blinking slowly."),
    ("How do you reset a Zephyr-9 router?", "Hold the rear button for 12 seconds."),
    ("What is the default Wi-Fi name of a Zephyr-9?", "ZEPHYR-SETUP."),
]
TEMPLATES = [
    "{q}",
    "Quick question: {q}",
    "{q} Please answer briefly.",
    "I need to know this. {q}",
    "Hi! {q}",
    "Can you tell me: {q}",
    "Support request: {q}",
    "{q} Thanks!",
    "Help please. {q}",
    "One more thing: {q}",
]


def rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for question, answer in FACTS:
        for template in TEMPLATES:
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": "You are the Zephyr-9 support assistant."},
                        {"role": "user", "content": template.format(q=question)},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    rng.shuffle(out)
    return out


def main() -> int:
    path = Path(sys.argv[1])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    print(f"wrote {len(rows())} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
