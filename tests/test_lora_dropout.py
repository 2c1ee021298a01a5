"""The worker's cheaper LoRA dropout drops at the asked rate, keeps the expectation, replays from a
seed, and replaces PEFT's dropout in LoRA and DoRA models that still train."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from services.training.worker.lora_dropout import LoraDropout, use_cheap_lora_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_at_the_asked_rate_in_every_position_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    dropout = LoraDropout(p).train()
    x = torch.ones(1000, 4096)
    out = dropout(x)
    dropped = out == 0
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    # each of the four 16-bit lanes of a random word drops at the same rate
    for lane in range(4):
        rate = dropped.view(-1, 4)[:, lane].float().mean().item()
        assert abs(rate - p) < 5 * 2 * sigma, (lane, rate)
    assert abs(out.mean().item() - 1.0) < 5 * sigma / (1 - p)
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)), rtol=1e-4)


def test_bf16_input_keeps_its_dtype_and_the_gradient_follows_the_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 190, 576, dtype=torch.bfloat16, requires_grad=True)
    out = LoraDropout(0.05).train()(x)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad == 0, (out == 0) & (x != 0))


def test_same_seed_same_mask_and_eval_is_identity() -> None:
    dropout = LoraDropout(0.1).train()
    x = torch.randn(64, 100)
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(dropout(x), first)
    assert dropout.eval()(x) is x


def test_tiny_p_is_plain_dropout() -> None:
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    out = LoraDropout(1e-4).train()(x)
    assert 0 < int((out == 0).sum()) < 300  # about 100, as nn.Dropout draws them


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_and_dora_models_take_it_and_still_learn(use_dora: bool) -> None:
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        use_dora=use_dora,
    )
    model = get_peft_model(_model(), config)
    assert use_cheap_lora_dropout(model) == 2 * 4  # 2 layers x 4 projections
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    lora_dropouts = [m for m in dropouts if isinstance(m, LoraDropout)]
    assert len(lora_dropouts) == 8 and all(m.p == 0.05 for m in lora_dropouts)

    model.train()
    ids = (torch.arange(16) * 5 % 64).repeat(4, 1)  # a sequence the adapter can learn
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
