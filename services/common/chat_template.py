"""Render chat conversations through a model's chat template and find the tokens a loss trains on.

Light enough for the datasets service: only `tokenizers` (Rust, batch encoding with offsets) and
`jinja2`, never torch or transformers. The Jinja environment mirrors transformers'
`_compile_jinja_template` and the template variables mirror `apply_chat_template`, so `render`
gives the same text and `measure`/`encode` the same token ids as
`tokenizer.apply_chat_template(messages, tokenize=True)` (which encodes the rendered text with
`add_special_tokens=False`: templates write BOS themselves).

Trained spans are character ranges of the rendered text: each assistant reply (unless its
`weight` is 0) from the start of its content through the end-of-turn token the template writes
right after it (`<|im_end|>`, `<|eot_id|>`, ...), which the model must learn to emit.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Encoding, Tokenizer

from services.common.errors import InvalidArgument

__all__ = ["DEFAULT_CHAT_TEMPLATE", "IGNORE_INDEX", "ChatTemplateError", "ChatTokenizer"]

# Used for models that ship no chat template: ChatML, the format most open chat models use. The
# assistant reply sits in {% generation %} so transformers' assistant mask agrees with our spans.
# It writes <|im_start|>/<|im_end|>; a tokenizer without those tokens encodes them as plain text.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

IGNORE_INDEX = -100  # label of a token the loss skips (torch's CrossEntropyLoss default)

# The named special tokens transformers passes to every template (`special_tokens_map`).
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# Names a message's reasoning is passed under; transformers fills the first from the others.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# How many occurrences of a content `_locate` examines before settling for the first.
_MAX_CANDIDATES = 64
_PROBE_MESSAGES = [{"role": "user", "content": "\x00probe\x00"}]


class ChatTemplateError(InvalidArgument):
    """A conversation that the model's chat template rejects or rewrites beyond recognition.

    `metadata["field"]` names the message (`messages[3]`), `metadata["index"]` the conversation
    within a batch passed to `measure`.
    """

    def __init__(self, message: str, *, field: str = "messages", index: int | None = None) -> None:
        meta: dict[str, object] = {"code": "CHAT_TEMPLATE"}
        if index is not None:
            meta["index"] = index
        super().__init__(message, field=field, reason="DATASET_INVALID", metadata=meta)


# --- the Jinja environment, as transformers builds it ----------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: rendered as its body (spans come from contents)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    # A `dict` global without attribute access to the type itself.
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Namespaces that refuse dunder/underscore attributes, as in transformers.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"but got {name!r}."
            )


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def _template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as transformers hands them to the template (None values dropped, reasoning
    aliased), without our `weight` key."""
    out = []
    for message in messages:
        m = {k: v for k, v in message.items() if v is not None and k != "weight"}
        reasoning = next((m[k] for k in _REASONING_FIELDS if k in m), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


# --- reading a model directory ---------------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or a serialized AddedToken."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidArgument(
            f"{path.name} could not be read: {e}", field="model", reason="MODEL_SOURCE_INVALID"
        ) from e
    return data if isinstance(data, dict) else {}


def _pick_template(value: Any) -> str | None:
    """tokenizer_config's chat_template: a string, or a list of {name, template} (use "default")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    if isinstance(value, dict):
        default = value.get("default")
        return default if isinstance(default, str) else None
    return None


def _read_template(directory: Path, config: dict[str, Any]) -> str | None:
    # Same priority as transformers: chat_template.jinja, then tokenizer_config.json. A processor's
    # chat_template.json comes last (tokenizers ignore it, but a template there beats none).
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _pick_template(config.get("chat_template"))
    if template is None:
        template = _pick_template(_read_json(directory / "chat_template.json").get("chat_template"))
    return template or None


# --- the tokenizer ---------------------------------------------------------------------------


class ChatTokenizer:
    """A model's tokenizer and chat template, without transformers."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        special_tokens: dict[str, str],
    ) -> None:
        self.tokenizer = tokenizer
        self.has_own_template = bool(chat_template)
        self.chat_template: str = chat_template or DEFAULT_CHAT_TEMPLATE
        self.template_sha256 = hashlib.sha256(self.chat_template.encode()).hexdigest()
        # Template variables, as transformers passes them (`special_tokens_map`).
        self.special_tokens = dict(special_tokens)
        self.bos_token = special_tokens.get("bos_token")
        self.eos_token = special_tokens.get("eos_token")
        self.pad_token = special_tokens.get("pad_token")
        self.bos_token_id = self._token_id(self.bos_token)
        self.eos_token_id = self._token_id(self.eos_token)
        self.pad_token_id = self._token_id(self.pad_token)
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self._template = _compile(self.chat_template)

        added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        added = {t for t in added if t.strip()}  # whitespace tokens are ordinary template text
        header = self._header_tokens(added)
        alternation = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        # After a content: whitespace, then an added token (group 1) or the end of the text.
        self._after_re = re.compile(rf"\s*(?:({alternation})|\Z)" if added else r"\s*\Z")
        self._header = frozenset(header)

    @classmethod
    def from_dir(cls, directory: Path) -> ChatTokenizer:
        """Load tokenizer.json, special tokens and chat template of an HF model directory."""
        directory = Path(directory)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise InvalidArgument(
                f"no tokenizer.json in {directory}",
                field="model",
                reason="MODEL_SOURCE_INVALID",
                metadata={"path": str(directory)},
            )
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise InvalidArgument(
                f"tokenizer.json could not be loaded: {e}",
                field="model",
                reason="MODEL_SOURCE_INVALID",
                metadata={"path": str(directory)},
            ) from e
        # The truncation/padding tokenizer.json may carry would change counts; transformers
        # disables both unless asked.
        tokenizer.no_truncation()
        tokenizer.no_padding()

        config = _read_json(directory / "tokenizer_config.json")
        legacy_map = _read_json(directory / "special_tokens_map.json")
        special: dict[str, str] = {}
        for name in _SPECIAL_TOKEN_NAMES:
            value = config[name] if name in config else legacy_map.get(name)
            text = _token_text(value)
            if text is not None:
                special[name] = text
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        wanted = list(special.values()) + [t for t in map(_token_text, extra) if t]
        missing = [t for t in dict.fromkeys(wanted) if tokenizer.token_to_id(t) is None]
        if missing:  # transformers adds special tokens that tokenizer.json lacks
            tokenizer.add_special_tokens(missing)
        return cls(tokenizer, _read_template(directory, config), special)

    def _token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    def _header_tokens(self, added: set[str]) -> set[str]:
        """The added tokens in the generation prompt (e.g. <|im_start|>): they open a turn."""
        try:
            with_prompt = self.render(_PROBE_MESSAGES, add_generation_prompt=True)
            without = self.render(_PROBE_MESSAGES)
        except jinja2.exceptions.TemplateError:
            return set()
        prompt = with_prompt[len(without) :] if with_prompt.startswith(without) else ""
        return {t for t in added if t in prompt}

    # --- rendering ---------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The text `apply_chat_template(messages, tokenize=False)` returns."""
        try:
            return self._template.render(
                messages=_template_messages(messages),
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except Exception as e:  # the template is the model's code: any failure is the data's
            raise ChatTemplateError(f"the chat template rejected the conversation: {e}") from e

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for generating the next assistant reply."""
        return self.render(messages, add_generation_prompt=True)

    def render_with_spans(
        self, messages: list[dict[str, Any]]
    ) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans a loss trains on, in order."""
        text = self.render(messages)
        return text, self._spans(text, messages)

    def _spans(self, text: str, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Find each message's content in order, starting after the previous message's turn.

        A message without searchable text (content blocks, tool calls, only whitespace, which
        the template's own whitespace makes ambiguous) or whose text the template rewrote leaves
        the position unknown; the next trained reply is then found by comparing renderings.
        """
        spans: list[tuple[int, int]] = []
        cursor = 0
        known = True  # whether `cursor` is the end of the previous message's turn
        for i, message in enumerate(messages):
            content = message.get("content")
            trained = message.get("role") == "assistant" and message.get("weight", 1) != 0
            found = None
            if isinstance(content, str) and content.strip() and not message.get("tool_calls"):
                found = self._locate(text, content, cursor) if known else None
            if found is not None:
                cursor = found[1]
                if trained:
                    spans.append(found)
            elif trained:
                spans.append(self._span_by_prefix(text, messages, i))
                cursor, known = spans[-1][1], True
            else:
                known = False
        return spans

    def _locate(self, text: str, content: str, cursor: int) -> tuple[int, int] | None:
        """Where `content` sits in `text` after `cursor`: (start, end of its turn).

        The right occurrence is the one that ends its turn: followed by whitespace and then an
        end-of-turn token or the end of the text. Earlier occurrences are skipped: a role name in a
        turn header (`<|im_start|>assistant`), a word in a default system prompt. If no occurrence
        ends a turn (a template that writes no end-of-turn tokens), the first one is used.
        """
        first = pos = text.find(content, cursor)
        for _ in range(_MAX_CANDIDATES):
            if pos < 0:
                break
            end = pos + len(content)
            after = self._after_re.match(text, end)
            if after is not None:
                token = after.group(1)
                if token is None:
                    return pos, end  # the end of the text
                if token not in self._header:
                    return pos, after.end()  # content, then its end-of-turn token
            pos = text.find(content, pos + 1)
        return None if first < 0 else (first, first + len(content))

    def _span_by_prefix(self, text: str, messages: list[dict[str, Any]], i: int) -> tuple[int, int]:
        """The span of messages[i] as what rendering it adds after the generation prompt."""
        prompt = self.render(messages[:i], add_generation_prompt=True)
        upto = self.render(messages[: i + 1]).rstrip()
        if not upto.startswith(prompt) or not text.startswith(upto):
            raise ChatTemplateError(
                f"the chat template changes earlier turns when message {i} is added, so the "
                "assistant reply cannot be located",
                field=f"messages[{i}]",
            )
        return len(prompt), len(upto)

    # --- tokens ------------------------------------------------------------------------------

    def measure(self, conversations: list[list[dict[str, Any]]]) -> list[tuple[int, int]]:
        """(tokens, trained tokens) of each conversation, tokenized in one parallel batch."""
        texts: list[str] = []
        all_spans: list[list[tuple[int, int]]] = []
        for index, messages in enumerate(conversations):
            try:
                text, spans = self.render_with_spans(messages)
            except ChatTemplateError as e:
                raise ChatTemplateError(e.message, field=e.field or "messages", index=index) from e
            texts.append(text)
            all_spans.append(spans)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [
            (len(encoding), sum(b - a for a, b in _token_ranges(encoding, spans)))
            for encoding, spans in zip(encodings, all_spans, strict=True)
        ]

    def encode(
        self, messages: list[dict[str, Any]], max_len: int | None = None
    ) -> tuple[list[int], list[int]]:
        """input_ids and labels (IGNORE_INDEX where not trained), cut to max_len tokens."""
        text, spans = self.render_with_spans(messages)
        encoding: Encoding = self.tokenizer.encode(text, add_special_tokens=False)
        input_ids = list(encoding.ids)
        labels = [IGNORE_INDEX] * len(input_ids)
        for a, b in _token_ranges(encoding, spans):
            labels[a:b] = input_ids[a:b]
        if max_len is not None:
            input_ids, labels = input_ids[:max_len], labels[:max_len]
        return input_ids, labels

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of already rendered texts (e.g. prompts)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def _token_ranges(encoding: Encoding, spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Token index ranges [a, b) of the tokens overlapping each span.

    A token overlaps span [s, e) when its end > s and its start < e (transformers' rule for the
    assistant mask). Asking the encoding which tokens hold the span's first and last character
    costs a few calls per span instead of building the offsets list of every token.
    """
    n = len(encoding)
    offsets: list[tuple[int, int]] | None = None
    for s, e in spans:
        if e <= s:
            continue
        a = encoding.char_to_token(s)
        b = encoding.char_to_token(e - 1)
        if a is None or b is None:
            # A boundary character no token covers (a normalizer dropped it): bisect the offsets.
            if offsets is None:
                offsets = encoding.offsets
            a = bisect_right(offsets, s, key=_end)
            b = bisect_left(offsets, e, key=_start)
        else:
            # Several tokens can share a character (a multi-byte character split by a byte-level
            # BPE); take all that overlap, as transformers does.
            while a > 0 and (c := encoding.token_to_chars(a - 1)) is not None and c[1] > s:
                a -= 1
            b += 1
            while b < n and (c := encoding.token_to_chars(b)) is not None and c[0] < e:
                b += 1
        if b > a:
            yield a, b


def _start(offset: tuple[int, int]) -> int:
    return offset[0]


def _end(offset: tuple[int, int]) -> int:
    return offset[1]
