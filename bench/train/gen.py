"""A deterministic chat JSONL for the training benchmark.

Rows are built from a seeded generator over the ingest benchmark's English vocabulary, so a given
(rows, seed) always gives the same bytes. Each user message carries the row's index as a ticket
number, so every row is unique (the datasets service would drop duplicates). About 80% of rows
are one exchange (system + user + assistant), the rest two exchanges; with SmolLM2's tokenizer
and chat template a row is about 60-200 tokens (mean ~125).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

# The ingest benchmark's vocabulary and phrases (its module is also named gen).
_spec = importlib.util.spec_from_file_location(
    "bench_ingest_gen", Path(__file__).resolve().parents[1] / "ingest" / "gen.py"
)
assert _spec is not None and _spec.loader is not None
_ingest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ingest)
OPENERS, REPLY_OPENERS = _ingest.OPENERS, _ingest.REPLY_OPENERS
SYSTEM_PROMPTS, WORDS = _ingest.SYSTEM_PROMPTS, _ingest.WORDS


def _sentence(rng: np.random.Generator, words: int) -> str:
    picked = rng.choice(len(WORDS), size=words)
    text = " ".join(WORDS[i] for i in picked)
    return text[0].upper() + text[1:] + "."


def _paragraph(rng: np.random.Generator, words: int) -> str:
    out = []
    while words > 0:
        n = min(words, int(rng.integers(6, 15)))
        out.append(_sentence(rng, n))
        words -= n
    return " ".join(out)


def rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        messages: list[dict[str, str]] = [
            {"role": "system", "content": SYSTEM_PROMPTS[int(rng.integers(len(SYSTEM_PROMPTS)))]}
        ]
        turns = 2 if rng.random() < 0.2 else 1
        for t in range(turns):
            user = f"{OPENERS[int(rng.integers(len(OPENERS)))]} ticket {i}-{t}: " + _paragraph(
                rng, int(rng.integers(8, 30 if turns == 1 else 16))
            )
            reply = (
                REPLY_OPENERS[int(rng.integers(len(REPLY_OPENERS)))]
                + " "
                + _paragraph(rng, int(rng.integers(20, 110 if turns == 1 else 45)))
            )
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        out.append({"messages": messages})
    return out


def generate(path: Path, n: int, seed: int = 0) -> int:
    """Writes `n` rows to `path`; returns the file size in bytes."""
    with path.open("w", encoding="utf-8") as fh:
        for row in rows(n, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path.stat().st_size


if __name__ == "__main__":
    generate(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 400)
