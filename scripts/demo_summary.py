"""Prints the demo's summary from the `--json` outputs that scripts/demo.sh keeps in its folder:
accuracy and tokens/s of the base, fine-tuned (PyTorch) and int4 ONNX models on the held-out
rows, the parity report, the time of each stage, and where the artifacts are.

    python scripts/demo_summary.py DIR              # the summary table
    python scripts/demo_summary.py --show-eval FILE # one line for an evaluation's JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCORER = "EXACT_MATCH"
EVALS = [
    ("base SmolLM2-135M-Instruct", "eval-base.json"),
    ("fine-tuned, LoRA (PyTorch)", "eval-tuned.json"),
    ("fine-tuned, ONNX int4", "eval-int4.json"),
]


def load(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def report(evaluation: dict[str, Any]) -> dict[str, Any]:
    return dict(evaluation.get("report") or {})


def accuracy(evaluation: dict[str, Any]) -> float | None:
    scores = report(evaluation).get("scores") or {}
    return float(scores[SCORER]) if SCORER in scores else None


def eval_line(evaluation: dict[str, Any]) -> str:
    """One line: accuracy, passed rows, tokens/s, time, and a sample answer."""
    r = report(evaluation)
    acc = accuracy(evaluation)
    if acc is None:
        error = (evaluation.get("error") or {}).get("message", "no report")
        return f"   failed: {error}"
    rows = int(r.get("row_count", 0))
    speed = float(r.get("tokens_per_second", 0.0))
    line = (
        f"   exact match {acc:.1%} ({round(acc * rows)}/{rows}), "
        f"{speed:.1f} tokens/s, {float(r.get('seconds', 0.0)):.0f} s"
    )
    samples = r.get("samples") or []
    if samples:
        s = samples[0]
        line += (
            f"\n   e.g. {s.get('prompt', '')!r} -> {s.get('answer', '')!r}"
            f" (want {s.get('reference', '')!r})"
        )
    return line


def table(headers: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A plain-text table; `numeric`: columns after the first are right-aligned."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if numeric and i > 0 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    return "\n".join(line.rstrip() for line in lines)


def summary(folder: Path) -> str:
    out: list[str] = ["", "== summary"]
    rows = []
    accuracies: dict[str, float | None] = {}
    for label, file in EVALS:
        evaluation = load(folder / file)
        r = report(evaluation)
        acc = accuracy(evaluation)
        accuracies[file] = acc
        rows.append(
            [
                label,
                "-" if acc is None else f"{acc:.1%}",
                str(r.get("row_count", "-")),
                f"{float(r.get('tokens_per_second', 0.0)):.1f}" if r else "-",
            ]
        )
    out.append(table(["held-out rows, exact match", "accuracy", "rows", "tokens/s"], rows))

    tuned, int4 = accuracies["eval-tuned.json"], accuracies["eval-int4.json"]
    if tuned is not None and int4 is not None:
        out.append(f"int4 vs PyTorch: {100 * (int4 - tuned):+.1f} points")
    parity = dict(load(folder / "conversion.json").get("parity_report") or {})
    if parity:
        ppl_ref = float(parity.get("reference_perplexity", 0.0))
        ppl_cand = float(parity.get("candidate_perplexity", 0.0))
        increase = f"{(ppl_cand / ppl_ref - 1):+.1%}" if ppl_ref else "-"
        out.append(
            f"parity gate: {'passed' if parity.get('passed') else 'FAILED'} "
            f"(greedy agreement {float(parity.get('greedy_agreement', 0.0)):.2f}, "
            f"perplexity {increase}, "
            f"mean logit delta {float(parity.get('mean_logit_delta', 0.0)):.3f})"
        )
    job = load(folder / "job.json")
    metrics = dict(job.get("latest_metrics") or {})
    if metrics:
        out.append(
            f"training: {metrics.get('step', '?')} steps, "
            f"last loss {float(metrics.get('loss', 0.0)):.3f}, "
            f"{float(metrics.get('tokens_per_second', 0.0)):.0f} tokens/s"
        )

    out.append("")
    stages = []
    total = 0
    for line in (folder / "stages.tsv").read_text(encoding="utf-8").splitlines():
        name, _, seconds = line.rpartition("\t")
        stages.append([name, f"{int(seconds)} s"])
        total += int(seconds)
    stages.append(["total", f"{total} s ({total / 60:.1f} min)"])
    out.append(table(["stage", "time"], stages))

    out.append("")
    artifacts = [["outputs of this run (JSON, loss plot)", str(folder)]]
    for label, file in [("adapter", "model-adapter.json"), ("int4 ONNX model", "model-int4.json")]:
        model = load(folder / file)
        if model:
            uri = (model.get("artifact") or {}).get("uri", "")
            artifacts.append([f"{label} {model.get('name', '').rsplit('/', 1)[-1]}", uri])
    for label, file in EVALS:
        uri = (report(load(folder / file)).get("artifact") or {}).get("uri", "")
        if uri:
            artifacts.append([f"report: {label}", uri + "report.json"])
    out.append(table(["artifact", "where"], artifacts, numeric=False))
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--show-eval":
        print(eval_line(load(Path(argv[1]))))
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(summary(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
