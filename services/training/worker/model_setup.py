"""Load the base model and make the parameters of the fine-tuning method trainable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from services.common.errors import InvalidArgument
from services.training.worker.lora_dropout import use_cheap_lora_dropout
from services.training.worker_config import WorkerConfig

ADAPTER_METHODS = ("lora", "dora", "qlora")


def build_model(config: WorkerConfig, base_dir: Path, device: torch.device) -> torch.nn.Module:
    """The model to train: full (every parameter), or the base frozen with a LoRA/DoRA adapter
    (QLoRA: on a 4-bit NF4 quantized base, bitsandbytes)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": True}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        # On CPU bitsandbytes computes in fp32 (bf16 compute is slower there, see PLATFORM.md).
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    model.config.use_cache = False
    if config.method == "qlora" and device.type == "cpu":
        _keep_4bit_layout_trainable(model)

    if config.method == "full":
        model.requires_grad_(True)
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.lora is None:
        raise InvalidArgument(f"method {config.method} needs lora settings", field="lora")
    if config.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules) or None,
        use_dora=config.method == "dora",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:  # e.g. target modules not found in the base model
        raise InvalidArgument(f"LoRA setup failed: {exc}", field="lora.target_modules") from exc
    if device.type == "cpu":
        use_cheap_lora_dropout(peft_model)
    return peft_model


def _keep_4bit_layout_trainable(model: torch.nn.Module) -> None:
    """bitsandbytes on CPU repacks a Linear4bit's weight for AVX512-BF16 inference the first
    time it runs in eval mode without grad, and the repacked weight has no backward: training
    after the first evaluation silently got zero gradients. Never repack."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) unique parameters; 4-bit packed weights count their real elements."""
    trainable = total = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", 0) or p.numel())
        quant_state = getattr(p, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            n = int(torch.Size(quant_state.shape).numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
