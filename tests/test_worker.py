"""The training worker, run for real: torchrun in a subprocess, DeepSpeed on CPU (gloo), a tiny
preset model and data in the real object store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from services.common.artifact_store import ArtifactStore
from services.common.manifest import Manifest
from services.common.resource_names import ResourceName
from services.training.model_catalog import ModelCatalog, ModelSource
from services.training.worker_config import (
    Distribution,
    OutputSpec,
    ResolvedHyperparameters,
    ResolvedLora,
    WorkerConfig,
    parse_event,
)

REPO = Path(__file__).resolve().parents[1]
PROJECT = "p1"
BASE = f"projects/{PROJECT}/models/tiny"
NAMES = ["Ada", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
# JIT-built DeepSpeed ops (only ZeRO-Offload needs one) survive between test runs.
EXTENSIONS_DIR = Path.home() / ".cache" / "tuneforge" / "torch_extensions"


def _rows(names: list[str]) -> bytes:
    rows: list[dict[str, Any]] = [
        {
            "messages": [
                {"role": "user", "content": f"Greet {n}"},
                {"role": "assistant", "content": f"Hello, {n}!"},
            ]
        }
        for n in names
    ]
    # A preference row trains on its chosen reply.
    rows.append(
        {
            "messages": [{"role": "user", "content": "Greet Mo"}],
            "chosen": "Hello, Mo!",
            "rejected": "Go away.",
        }
    )
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def store(artifact_store: ArtifactStore, tmp_path: Path) -> ArtifactStore:
    """A bucket holding the tiny-llama preset as BASE and canonical train/validation files."""
    ModelCatalog(artifact_store, tmp_path / "catalog").import_model(
        ResourceName(PROJECT, "models", "tiny"), ModelSource("preset", "tiny-llama")
    )
    artifact_store.put_bytes("datasets/content/abc/train.jsonl", _rows(NAMES))
    artifact_store.put_bytes("datasets/content/abc/validation.jsonl", _rows(["Ann", "Ben"]))
    return artifact_store


@pytest.fixture
def tied_base(store: ArtifactStore, tmp_path: Path) -> str:
    """The tiny base with tied input and output embeddings, as SmolLM2 has: its frozen
    lm_head.weight is an alias of embed_tokens.weight."""
    from transformers import AutoModelForCausalLM

    model_dir = download(store, "models/p1/tiny/", tmp_path / "tied")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(model_dir)
    tied = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    ModelCatalog(store, tmp_path / "tied-import").import_model(
        ResourceName(PROJECT, "models", "tied"), ModelSource("hf_dir", str(model_dir))
    )
    return f"projects/{PROJECT}/models/tied"


def job_config(
    job: str = "j1",
    method: str = "lora",
    *,
    zero_stage: int = 0,
    processes: int = 1,
    max_steps: int = 8,
    learning_rate: float = 1e-2,
    checkpoint_interval_steps: int = 100,
    eval_interval_steps: int = 0,
    precision: str = "fp32",
    packing: bool = False,
    resume: bool = True,
    lora_dropout: float = 0.0,
) -> WorkerConfig:
    return WorkerConfig(
        job=f"projects/{PROJECT}/trainingJobs/{job}",
        base_model=BASE,
        train_files=["datasets/content/abc/train.jsonl"],
        validation_files=["datasets/content/abc/validation.jsonl"],
        method=method,  # type: ignore[arg-type]
        hyperparameters=ResolvedHyperparameters(
            epochs=1,
            max_steps=max_steps,
            learning_rate=learning_rate,
            batch_size=2,
            gradient_accumulation_steps=2,
            max_seq_len=64,
            warmup_ratio=0.1,
            weight_decay=0.0,
            lr_scheduler="linear",
            packing=packing,
            eval_interval_steps=eval_interval_steps,
            checkpoint_interval_steps=checkpoint_interval_steps,
            precision=precision,  # type: ignore[arg-type]
            max_grad_norm=1.0,
        ),
        lora=None
        if method == "full"
        else ResolvedLora(
            rank=8, alpha=16, dropout=lora_dropout, target_modules=["q_proj", "v_proj"]
        ),
        distribution=Distribution(processes_per_node=processes, zero_stage=zero_stage),
        seed=3,
        output=OutputSpec(model=f"projects/{PROJECT}/models/{job}-out", labels={"t": "1"}),
        checkpoint_prefix=f"jobs/{PROJECT}/{job}/checkpoints/",
        resume=resume,
        lineage={"training_dataset": f"projects/{PROJECT}/datasets/d1"},
    )


def _env(store: ArtifactStore) -> dict[str, str]:
    s = store.settings
    env = dict(os.environ)
    env.update(
        TUNEFORGE_S3_ENDPOINT=s.endpoint,
        TUNEFORGE_S3_ACCESS_KEY=s.access_key,
        TUNEFORGE_S3_SECRET_KEY=s.secret_key.get_secret_value(),
        TUNEFORGE_S3_BUCKET=s.bucket,
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=str(EXTENSIONS_DIR),
        PYTHONPATH=str(REPO),
    )
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(store: ArtifactStore, config: WorkerConfig, work: Path) -> subprocess.Popen[str]:
    """Launch the worker exactly as the training service does."""
    work.mkdir(parents=True, exist_ok=True)
    config.to_file(work / "job.json")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(config.distribution.processes_per_node),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "services.training.worker",
        "job.json",
    ]
    return subprocess.Popen(
        command,
        cwd=work,
        env=_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_worker(
    store: ArtifactStore, config: WorkerConfig, work: Path, timeout: float = 240
) -> list[dict[str, Any]]:
    proc = start_worker(store, config, work)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"worker timed out; output:\n{out[-6000:]}")
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out[-8000:]}"
    return [e for e in map(parse_event, out.splitlines()) if e is not None]


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def output_prefix(config: WorkerConfig) -> str:
    return f"models/{PROJECT}/{config.output.model.rsplit('/', 1)[-1]}/"


def output_manifest(store: ArtifactStore, config: WorkerConfig) -> Manifest:
    manifest = store.read_manifest(output_prefix(config))
    assert manifest is not None
    return manifest


def download(store: ArtifactStore, prefix: str, dest: Path) -> Path:
    store.download_artifact(prefix, dest)
    return dest


def check_training(events: list[dict[str, Any]], steps: int) -> None:
    started = of(events, "started")
    assert len(started) == 1 and started[0]["total_steps"] == steps
    metrics = of(events, "metrics")
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert metrics[-1]["loss"] < metrics[0]["loss"], [m["loss"] for m in metrics]
    assert all(m["tokens_per_second"] > 0 and m["grad_norm"] > 0 for m in metrics), metrics
    evals = of(events, "eval")
    assert evals and 0.0 <= evals[-1]["token_accuracy"] <= 1.0
    assert len(of(events, "output")) == 1


def logits_of(model: torch.nn.Module, text_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=torch.tensor([text_ids])).logits
        return logits


def check_adapter(store: ArtifactStore, config: WorkerConfig, tmp_path: Path) -> Manifest:
    """The adapter loads with plain peft onto the base model and changes its logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest = output_manifest(store, config)
    assert manifest.kind == "model" and manifest.format == "peft"
    attrs = manifest.attributes
    assert attrs["model_kind"] == "ADAPTER" and attrs["base_model"] == BASE
    assert attrs["method"] == config.method and attrs["source"] == f"job:{config.job}"
    assert attrs["labels"] == {"t": "1"} and attrs["model_type"] == "llama"
    assert 0 < attrs["parameter_count"] < 100_000
    assert manifest.lineage["training_dataset"].endswith("datasets/d1")
    assert json.loads(manifest.lineage["config_json"])["method"] == config.method
    assert {"train_loss", "eval_loss", "token_accuracy"} <= set(manifest.metrics)
    paths = {f.path for f in manifest.files}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= paths

    base_dir = download(store, "models/p1/tiny/", tmp_path / "base")
    adapter_dir = download(
        store,
        config.output.model.replace("projects/", "models/").replace("/models/", "/", 1) + "/",
        tmp_path / "adapter",
    )
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ids = list(range(5, 40))
    before = logits_of(base, ids)
    tuned = PeftModel.from_pretrained(base, adapter_dir)
    after = logits_of(tuned, ids)
    assert not torch.allclose(before, after, atol=1e-4)
    return manifest


def adapter_weights(
    store: ArtifactStore, config: WorkerConfig, dest: Path
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    download(store, output_prefix(config), dest)
    return load_file(dest / "adapter_model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_lora_zero0_trains_and_publishes_a_peft_adapter(
    store: ArtifactStore, tmp_path: Path
) -> None:
    config = job_config("lora0", eval_interval_steps=4)
    events = run_worker(store, config, tmp_path / "work")
    check_training(events, 8)
    assert [e["step"] for e in of(events, "eval")] == [4, 8]
    check_adapter(store, config, tmp_path)


def test_full_fine_tune_publishes_safetensors_with_tokenizer(
    store: ArtifactStore, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = job_config("full", "full", learning_rate=2e-3, max_steps=6)
    events = run_worker(store, config, tmp_path / "work")
    check_training(events, 6)
    manifest = output_manifest(store, config)
    assert manifest.format == "safetensors" and manifest.attributes["model_kind"] == "MERGED"
    assert manifest.attributes["parameter_count"] == 107328
    out = download(store, output_prefix(config), tmp_path / "out")
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(
        download(store, "models/p1/tiny/", tmp_path / "base"), dtype=torch.float32
    )
    ids = AutoTokenizer.from_pretrained(out)("Greet Ann")["input_ids"]
    assert not torch.allclose(logits_of(base, ids), logits_of(tuned, ids), atol=1e-4)


def test_dora_with_packing_and_bf16(store: ArtifactStore, tmp_path: Path) -> None:
    config = job_config("dora", "dora", packing=True, precision="bf16")
    events = run_worker(store, config, tmp_path / "work")
    check_training(events, 8)
    packed = [e["message"] for e in of(events, "log") if e["message"].startswith("packed ")]
    assert len(packed) == 1 and re.fullmatch(
        r"packed 13 examples into \d+ rows, fill \d+%", packed[0]
    )
    manifest = check_adapter(store, config, tmp_path)
    assert manifest.attributes["precision"] == "bf16"
    adapter_config = json.loads(store.get_bytes(output_prefix(config) + "adapter_config.json"))
    assert adapter_config["use_dora"] is True and adapter_config["base_model_name_or_path"] == BASE


def test_qlora_trains_on_a_4bit_base(store: ArtifactStore, tmp_path: Path) -> None:
    pytest.importorskip(
        "bitsandbytes", reason="QLoRA needs bitsandbytes (pip install bitsandbytes)"
    )
    config = job_config("qlora", "qlora")
    events = run_worker(store, config, tmp_path / "work")
    check_training(events, 8)
    check_adapter(store, config, tmp_path)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero_with_two_processes(store: ArtifactStore, tmp_path: Path, zero_stage: int) -> None:
    config = job_config(f"zero{zero_stage}", zero_stage=zero_stage, processes=2, max_steps=6)
    events = run_worker(store, config, tmp_path / "work")
    check_training(events, 6)
    assert of(events, "started")[0]["world_size"] == 2
    check_adapter(store, config, tmp_path)


def test_resume_after_kill_continues_from_the_checkpoint(
    store: ArtifactStore, tmp_path: Path
) -> None:
    # Reference: the same job, never interrupted.
    # LoRA dropout at the service's default: resuming must also replay the dropout masks.
    total = 12
    ref_config = job_config("ref", max_steps=total, lora_dropout=0.05)
    reference = run_worker(store, ref_config, tmp_path / "ref")
    ref_metrics = {m["step"]: m for m in of(reference, "metrics")}

    config = job_config("res", max_steps=total, checkpoint_interval_steps=2, lora_dropout=0.05)
    proc = start_worker(store, config, tmp_path / "work")
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        event = parse_event(line)
        if event is not None:
            seen.append(event)
            if event["type"] == "checkpoint":
                # torchrun runs each rank in a session of its own: kill every descendant.
                group = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
                for member in group:
                    member.kill()
                break
    proc.wait(timeout=30)
    # Every rank is gone (not only torchrun), and a request already sent has landed.
    psutil.wait_procs(group, timeout=30)
    time.sleep(1.0)
    proc.stdout.close()
    first = of(seen, "checkpoint")[0]
    assert first["step"] == 2 and first["prefix"] == "jobs/p1/res/checkpoints/step-00000002/"
    # Tiny steps are fast: the worker may publish another checkpoint before the kill lands.
    published = store.list_artifacts(config.checkpoint_prefix)
    killed_at = int(published[-1].rstrip("/").rsplit("-", 1)[-1])
    assert 2 <= killed_at < total
    assert store.read_manifest(output_prefix(config)) is None

    # ZeRO state is partitioned per rank: another world size must fail clearly, not diverge.
    other = config.model_copy(update={"distribution": Distribution(processes_per_node=2)})
    proc = start_worker(store, other, tmp_path / "other")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "written by 1 processes but this run has 2" in out

    events = run_worker(store, config, tmp_path / "work")
    assert of(events, "started")[0]["resumed_from_step"] == killed_at
    steps = [m["step"] for m in of(events, "metrics")]
    assert steps == list(range(killed_at + 1, total + 1))
    # Exact resume (adapter weights, optimizer state, schedule, data position): the loss curve
    # continues where the uninterrupted run's goes, and ends in the same adapter.
    for m in of(events, "metrics"):
        ref = ref_metrics[m["step"]]
        assert m["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-4)
        assert m["learning_rate"] == pytest.approx(ref["learning_rate"], rel=1e-6)
        assert m["trained_tokens"] == ref["trained_tokens"]
    assert_same_weights(
        adapter_weights(store, config, tmp_path / "out"),
        adapter_weights(store, ref_config, tmp_path / "ref-out"),
    )
    assert [c["step"] for c in of(events, "checkpoint")] == list(range(killed_at + 2, total + 1, 2))
    assert len(store.list_artifacts(config.checkpoint_prefix)) == 3  # older ones pruned
    assert output_manifest(store, config).attributes["source"] == f"job:{config.job}"

    # Run once more: the output exists, so the worker only says so and reports it again.
    again = run_worker(store, config, tmp_path / "work")
    assert [e["type"] for e in again] == ["log", "output"]
    assert "nothing left to train" in again[0]["message"]


@pytest.mark.parametrize(("zero_stage", "processes"), [(0, 1), (2, 2), (3, 2)])
def test_adapter_checkpoint_holds_only_the_adapter_and_resumes_exactly(
    store: ArtifactStore, tied_base: str, tmp_path: Path, zero_stage: int, processes: int
) -> None:
    config = job_config(
        f"ckpt{zero_stage}",
        zero_stage=zero_stage,
        processes=processes,
        max_steps=6,
        checkpoint_interval_steps=2,
        lora_dropout=0.05,
    ).model_copy(update={"base_model": tied_base})
    first = run_worker(store, config, tmp_path / "first")
    assert [c["step"] for c in of(first, "checkpoint")] == [2, 4, 6]
    first_adapter = adapter_weights(store, config, tmp_path / "first-out")

    # The module state holds the LoRA A and B of q_proj and v_proj in 2 layers and nothing of
    # the frozen base, not even lm_head.weight (the tied embedding DeepSpeed's filter misses).
    saved = download(store, f"{config.checkpoint_prefix}step-00000002/", tmp_path / "step-2")
    base_bytes = store.stat("models/p1/tied/model.safetensors").size
    module_files = sorted((saved / "engine").glob("*model_states.pt"))
    assert len(module_files) == (processes if zero_stage == 3 else 1)
    for path in module_files:
        module = torch.load(path, weights_only=False)["module"]
        frozen = [k for k in module if ".lora_A." not in k and ".lora_B." not in k]
        assert len(module) == 8 and not frozen, frozen
        if zero_stage != 3:  # ZeRO-3 saves empty placeholders: the weights are partitioned
            assert sum(t.numel() for t in module.values()) == 3584
        assert path.stat().st_size < base_bytes / 5, (path.name, path.stat().st_size, base_bytes)

    # Back to the state right after step 2: its checkpoint is the latest, no output yet.
    for step in (4, 6):
        store.delete_artifact(f"{config.checkpoint_prefix}step-{step:08d}/")
    store.delete_artifact(output_prefix(config))
    again = run_worker(store, config, tmp_path / "again")
    assert of(again, "started")[0]["resumed_from_step"] == 2
    before = {m["step"]: m for m in of(first, "metrics")}
    resumed = of(again, "metrics")
    assert [m["step"] for m in resumed] == [3, 4, 5, 6]
    for m in resumed:
        assert m["loss"] == pytest.approx(before[m["step"]]["loss"], rel=1e-4, abs=1e-4)
        assert m["learning_rate"] == pytest.approx(before[m["step"]]["learning_rate"], rel=1e-6)
    assert_same_weights(adapter_weights(store, config, tmp_path / "again-out"), first_adapter)


def test_lora_layers_train_with_the_cheaper_dropout_on_cpu(
    store: ArtifactStore, tmp_path: Path
) -> None:
    from services.training.worker.lora_dropout import LoraDropout
    from services.training.worker.model_setup import build_model

    base_dir = download(store, "models/p1/tiny/", tmp_path / "base")
    for method in ("lora", "dora"):
        model = build_model(
            job_config(method=method, lora_dropout=0.05), base_dir, torch.device("cpu")
        )
        dropouts = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
        assert dropouts and all(type(m) is LoraDropout and m.p == 0.05 for m in dropouts)


@pytest.mark.slow  # the first run JIT-builds DeepSpeed's cpu_adam (~75 s on 2 cores)
def test_zero2_with_optimizer_offload(store: ArtifactStore, tmp_path: Path) -> None:
    config = job_config("offload", zero_stage=2, processes=2, max_steps=6)
    config.distribution.offload_optimizer = True
    events = run_worker(store, config, tmp_path / "work", timeout=600)
    check_training(events, 6)
    check_adapter(store, config, tmp_path)


def test_missing_base_model_fails_with_a_clear_message(
    store: ArtifactStore, tmp_path: Path
) -> None:
    config = job_config("nobase").model_copy(
        update={"base_model": f"projects/{PROJECT}/models/missing"}
    )
    proc = start_worker(store, config, tmp_path / "work")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "training worker (rank 0) failed" in out and "models/missing" in out
