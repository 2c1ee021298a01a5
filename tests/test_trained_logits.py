"""The training loss that computes logits only at trained positions equals the model's own."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from services.common.chat_template import IGNORE_INDEX
from services.training.worker.trained_logits import TrainedTokenLoss


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).train()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # the prompt
    labels[mask == 0] = IGNORE_INDEX
    labels[2, 7] = IGNORE_INDEX  # an untrained turn inside the reply
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def test_loss_and_gradients_equal_the_full_logits_loss() -> None:
    batch = _batch()
    reference_model, model = _model(), _model()
    expected = reference_model(**batch).loss
    expected.backward()

    # What the LM head is given: only the positions whose next token is trained.
    seen: list[torch.Size] = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    loss_fn = TrainedTokenLoss(model)
    got = loss_fn(model, batch)
    got.backward()
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert seen == [torch.Size([trained, 32])]
    torch.testing.assert_close(got, expected)
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)

    # The hook only acts inside the loss: a plain forward still has logits for every position.
    assert model(**batch).logits.shape == (3, 12, 96)
    loss_fn.close()


def test_a_model_without_an_output_embedding_takes_its_own_loss() -> None:
    class Plain(torch.nn.Module):
        def forward(self, **batch: torch.Tensor) -> object:
            return type("Out", (), {"loss": torch.tensor(1.5)})()

    assert float(TrainedTokenLoss(Plain())(Plain(), _batch())) == 1.5
