"""Export a merged Hugging Face model to the ONNX Runtime GenAI layout with the GenAI model
builder (`python -m onnxruntime_genai.models.builder`), run as a child process so that a cancelled
job can kill it, and check what it wrote: genai_config.json, the decoder with a KV cache, its
external weights, the tokenizer and the chat template.

int8 and int4 are weight-only: MatMul weights (lm_head included; int4 also the embedding) are
stored as int8/int4 blocks of 32 with float scales (MatMulNBits, GatherBlockQuantized), and the
graph has no quantize nodes. Full dynamic int8 (`quantize_dynamic`: activations quantized per
tensor) broke SmolLM2's output (see PLATFORM.md), so an export whose graph quantizes activations
is refused. The CPU MatMulNBits kernel does compute with activations rounded to int8 per block
of 32 (accuracy_level 4, the builder's CPU default); against fp32 compute (level 1) that left
SmolLM2's perplexity the same (+0.49% vs +0.53% for int8) and decoded 11x faster, so it stays.

Core logic: local directories only. The builder needs the `onnx-ir` package next to
onnxruntime-genai.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from services.common.chat_template import ChatTokenizer
from services.common.errors import FailedPrecondition, InvalidArgument, TuneforgeError
from services.common.model_files import TOKENIZER_FILES

__all__ = ["PRECISIONS", "ExportError", "export_onnx"]

PRECISIONS = ("fp32", "int8", "int4")
# How many of the builder's last output lines an error message carries.
TAIL_LINES = 20
# Ops that quantize activations (dynamic or static int8 compute): not weight-only.
_ACTIVATION_QUANT_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "QuantizeLinear",
        "QGemm",
    }
)
# Weight widths each precision may use: int4 keeps its most sensitive MatMuls in int8.
_BITS = {"int8": {8}, "int4": {4, 8}}
# Builder options per precision. int4: k_quant, with lm_head and the quantization-sensitive
# layers (llama.cpp's choice) in int8. On SmolLM2 plain int4 raised perplexity by 42%, this by 4%
# (model 112 MB instead of 86 MB; fp32 is 519 MB). accuracy_level stays the CPU default 4 (int8
# compute inside MatMulNBits): level 1 (fp32 compute) gave the same perplexity, 11x slower.
BUILDER_OPTIONS: dict[str, tuple[str, ...]] = {"int4": ("algo_config=k_quant_mixed",)}
# A conversation for checking that the exported chat template renders.
_PROBE = [{"role": "user", "content": "Hello!"}]


class ExportError(TuneforgeError):
    """The builder failed or wrote an incomplete model; the message ends with its last lines."""

    code = "INTERNAL"
    default_reason = "WORKER_FAILED"


def builder_command(merged_dir: Path, out_dir: Path, precision: str, cache_dir: Path) -> list[str]:
    # -u: unbuffered, so that its lines arrive as it prints them.
    return [
        sys.executable,
        "-u",
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(merged_dir),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
        *(["--extra_options", *BUILDER_OPTIONS[precision]] if precision in BUILDER_OPTIONS else []),
    ]


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """Lines of a child's output. Progress bars redraw with a carriage return: only what the line
    shows last is kept, as a terminal would show it."""
    buffer = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            shown = raw.rstrip(b"\r").rsplit(b"\r", 1)[-1]
            yield shown.decode("utf-8", errors="replace").rstrip()
    if buffer:
        yield buffer.rsplit(b"\r", 1)[-1].decode("utf-8", errors="replace").rstrip()


def _run_builder(command: list[str], on_line: Callable[[str], None] | None) -> None:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # The child stays in our process group: killing the worker's group cancels the export.
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        for line in _lines(process.stdout):
            if not line:
                continue
            tail.append(line)
            if on_line is not None:
                on_line(line)
        rc = process.wait()
    finally:
        if process.poll() is None:  # on_line raised, or we are being torn down
            process.kill()
            process.wait()
    if rc != 0:
        raise ExportError(
            f"the ONNX model builder exited with code {rc}; its last lines:\n" + "\n".join(tail),
            metadata={"exit_code": rc},
        )


def _genai_config(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "genai_config.json"
    if not path.is_file():
        raise ExportError("the ONNX model builder wrote no genai_config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        decoder = config["model"]["decoder"]
        if not isinstance(decoder["filename"], str):
            raise TypeError("filename is not a string")
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"genai_config.json is not a GenAI model config: {e}") from e
    return dict(config)


def _check_graph(model_file: Path, precision: str) -> None:
    """The model and its external data exist; int8/int4 quantize weights only, to that width."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    missing = sorted(loc for loc in locations if not (model_file.parent / loc).is_file())
    if missing:
        raise ExportError(f"the exported model's weight file is missing: {', '.join(missing)}")
    ops = {node.op_type for node in model.graph.node}
    activation_ops = sorted(ops & _ACTIVATION_QUANT_OPS)
    if activation_ops:
        raise ExportError(
            f"the {precision} export quantizes activations ({', '.join(activation_ops)}): only "
            "weight-only quantization keeps the model's output"
        )
    if precision in _BITS:
        bits = {
            onnx.helper.get_attribute_value(a)
            for n in model.graph.node
            if n.op_type == "MatMulNBits"
            for a in n.attribute
            if a.name == "bits"
        }
        narrowest = min(_BITS[precision])
        if narrowest not in bits or not bits <= _BITS[precision]:
            raise ExportError(
                f"the {precision} export has no {narrowest}-bit weight-only MatMuls "
                f"(MatMulNBits bits: {sorted(bits) or 'none'})"
            )


def _ensure_tokenizer(merged_dir: Path, out_dir: Path) -> None:
    """The tokenizer files the builder did not write, copied from the merged model; the exported
    tokenizer must encode exactly as the merged model's."""
    for name in TOKENIZER_FILES:
        if (merged_dir / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(merged_dir / name, out_dir / name)
    source = ChatTokenizer.from_dir(merged_dir)
    exported = ChatTokenizer.from_dir(out_dir)
    text = source.render([*_PROBE, {"role": "assistant", "content": "Hi! ünïcödé 123, <tag> ok."}])
    if source.tokenizer.encode(text).ids != exported.tokenizer.encode(text).ids:
        raise ExportError("the exported tokenizer encodes text differently from the merged model's")


def _ensure_chat_template(template: str, out_dir: Path) -> None:
    """chat_template.jinja (read by onnxruntime-genai 0.18 and transformers) and the same
    template in tokenizer_config.json (read by older onnxruntime-genai versions)."""
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_file = out_dir / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("chat_template") != template:
        config["chat_template"] = template
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _check_runtime(
    out_dir: Path, expected_prompt: str, on_line: Callable[[str], None] | None
) -> None:
    """onnxruntime-genai loads the model and renders the chat template with its tokenizer."""
    import onnxruntime_genai as og

    try:
        model = og.Model(str(out_dir))
        tokenizer = og.Tokenizer(model)
        rendered = tokenizer.apply_chat_template(json.dumps(_PROBE), add_generation_prompt=True)
    except Exception as e:  # onnxruntime-genai raises plain RuntimeErrors
        raise ExportError(f"onnxruntime-genai cannot load the exported model: {e}") from e
    del tokenizer, model
    if rendered != expected_prompt and on_line is not None:
        on_line(
            "warning: onnxruntime-genai renders the chat template differently from transformers: "
            f"{rendered!r} != {expected_prompt!r}"
        )


def export_onnx(
    merged_dir: Path,
    out_dir: Path,
    precision: str,
    cache_dir: Path,
    *,
    on_line: Callable[[str], None] | None = None,
) -> list[Path]:
    """Build an ONNX Runtime GenAI model of `merged_dir` (an HF directory) in `out_dir`
    (replaced) for the CPU, and return the files written, sorted.

    `precision` is fp32, or int8/int4 weight-only. `on_line` gets the builder's output lines.
    Raises InvalidArgument for a bad precision, FailedPrecondition for a source that is not a
    model directory, ExportError (with the builder's last lines) when the build fails.
    """
    merged_dir, out_dir, cache_dir = Path(merged_dir), Path(out_dir), Path(cache_dir)
    if precision not in PRECISIONS:
        raise InvalidArgument(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}", field="precision"
        )
    if not (merged_dir / "config.json").is_file():
        raise FailedPrecondition(f"no config.json in {merged_dir}: not a merged model directory")
    # Read before building: a model without a usable tokenizer is refused in seconds.
    chat = ChatTokenizer.from_dir(merged_dir)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _run_builder(builder_command(merged_dir, out_dir, precision, cache_dir), on_line)

    config = _genai_config(out_dir)
    model_file = out_dir / config["model"]["decoder"]["filename"]
    if not model_file.is_file():
        raise ExportError(f"the ONNX model builder wrote no {model_file.name}")
    _check_graph(model_file, precision)
    _ensure_tokenizer(merged_dir, out_dir)
    # The template the model was trained with: its own, or ChatML for a model without one.
    _ensure_chat_template(chat.chat_template, out_dir)
    _check_runtime(out_dir, chat.render_prompt(_PROBE), on_line)
    return sorted(p for p in out_dir.rglob("*") if p.is_file())
