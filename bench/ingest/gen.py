"""A deterministic chat JSONL for the ingest benchmark: system + user + assistant per row.

Rows are built from a seeded generator over a fixed English vocabulary, so a given (rows, seed)
always gives the same bytes. Each user message carries the row's index as a ticket number, so
every row is unique (the service would otherwise drop duplicates). Lengths vary: about 60-150
tokens a row with SmolLM2's tokenizer and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly support agent for an online store. Answer briefly and politely.",
    "You are a concise technical assistant. Prefer short, correct answers.",
    "You are a patient tutor who explains things step by step.",
    "You help customers with orders, returns and shipping questions.",
    "You are an assistant for a small software company. Be clear and practical.",
    "Answer the user's question accurately. If you are unsure, say so.",
    "You are a travel assistant who suggests plans within a budget.",
]

OPENERS = [
    "Hi, I have a question about",
    "Can you help me with",
    "I need some advice on",
    "Could you explain",
    "What is the best way to handle",
    "I am confused about",
    "Please tell me more about",
    "How should I think about",
]

REPLY_OPENERS = [
    "Sure, here is what I would suggest.",
    "Good question.",
    "Happy to help with that.",
    "Here is a short answer.",
    "Let me explain.",
    "Thanks for the details.",
    "That depends on a few things.",
    "In most cases the answer is simple.",
]

_VOCABULARY = (
    "the of and to in is that for it as with was on be by at this from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then "
    "do first any my now such like our over man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people how "
    "too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since "
    "against go came right used take three order return shipping package delivery account "
    "password email invoice refund price discount product size color warranty store customer "
    "support team week month morning evening address phone card payment bank transfer balance "
    "report budget project deadline meeting schedule file folder document update version server "
    "network database query error message screen button setting option feature install restart "
    "backup memory disk cable battery charger laptop printer camera speaker kitchen garden recipe "
    "flour sugar butter oven minutes temperature water coffee tea bread soup salad train flight "
    "hotel ticket city museum beach mountain river weather rain sun summer winter spring autumn "
    "student teacher lesson exam grade homework question answer example problem solution method "
    "result reason idea plan step list note simple clear quick careful important useful possible "
    "different easy hard small large early late better best safe ready happy sorry"
)
WORDS = _VOCABULARY.split()


def generate(path: Path, rows: int, seed: int = 0) -> int:
    """Writes `rows` rows to `path`; returns the file size in bytes."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS, dtype=object)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    block = 10_000
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            systems = rng.integers(0, len(SYSTEM_PROMPTS), n)
            openers = rng.integers(0, len(OPENERS), n)
            replies = rng.integers(0, len(REPLY_OPENERS), n)
            user_len = rng.integers(6, 30, n)
            reply_len = rng.integers(12, 60, n)
            # Draw every word of the block at once (much faster than word by word).
            total = int(user_len.sum() + reply_len.sum())
            picks = words[rng.integers(0, len(words), total)].tolist()
            cuts = rng.integers(5, 13, total // 5 + 2).tolist()
            pos = 0
            ci = 0
            lines = []
            for j in range(n):
                texts = []
                for length in (int(user_len[j]), int(reply_len[j])):
                    chunk = picks[pos : pos + length]
                    pos += length
                    sentences = []
                    i = 0
                    while i < length:
                        k = cuts[ci]
                        ci += 1
                        part = chunk[i : i + k]
                        sentences.append(" ".join([part[0].capitalize(), *part[1:]]) + ".")
                        i += k
                    texts.append(" ".join(sentences))
                user = f"{OPENERS[openers[j]]} ticket {start + j + 1}. {texts[0]}"
                reply = f"{REPLY_OPENERS[replies[j]]} {texts[1]}"
                lines.append(
                    dumps(
                        {
                            "messages": [
                                {"role": "system", "content": SYSTEM_PROMPTS[systems[j]]},
                                {"role": "user", "content": user},
                                {"role": "assistant", "content": reply},
                            ]
                        }
                    )
                )
            out.write("\n".join(lines))
            out.write("\n")
    return path.stat().st_size


def head_lines(src: Path, dst: Path, rows: int) -> int:
    """The first `rows` lines of `src` as a file of their own (a prefix is still all unique)."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        for _ in range(rows):
            line = fin.readline()
            if not line:
                break
            fout.write(line)
    return dst.stat().st_size
