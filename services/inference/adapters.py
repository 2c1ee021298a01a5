"""Whether a catalog adapter may run on a served base model, decided from the two manifests.

An adapter's weights only mean something on the exact weights they were trained against, and its
token ids only on the tokenizer it was trained with. The training worker records both in the
adapter's manifest (base model name and manifest sha256, tokenizer and chat-template sha256), so a
mismatch is refused before any byte is downloaded, with the reason a user can act on.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.manifest import Manifest

ADAPTER_KIND = "ADAPTER"


def model_kind(manifest: Manifest) -> str:
    return str(manifest.attributes.get("model_kind", "BASE"))


def adapter_base_model(adapter: Manifest) -> str:
    return str(adapter.attributes.get("base_model") or adapter.lineage.get("base_model") or "")


def _recorded(adapter: Manifest, key: str) -> str:
    return str(adapter.lineage.get(key) or adapter.attributes.get(key) or "")


def _mismatch(message: str, adapter: Manifest, base: Manifest, **extra: Any) -> FailedPrecondition:
    return FailedPrecondition(
        message,
        reason="ADAPTER_BASE_MISMATCH",
        metadata={"adapter": adapter.name, "model": base.name, **extra},
    )


def check_adapter_fits(base: Manifest, adapter: Manifest) -> None:
    """Raises InvalidArgument if `adapter` is not an adapter, FailedPrecondition with reason
    ADAPTER_BASE_MISMATCH if it was made for another base model, base version or tokenizer."""
    kind = model_kind(adapter)
    if kind != ADAPTER_KIND:
        raise InvalidArgument(f"{adapter.name} is a {kind} model, not an adapter", field="adapter")
    expected = adapter_base_model(adapter)
    if expected != base.name:
        raise _mismatch(
            f"{adapter.name} was trained on {expected or 'an unrecorded base model'}, "
            f"not on {base.name}",
            adapter,
            base,
            adapter_base_model=expected,
        )
    base_sha = _recorded(adapter, "base_model_sha256")
    if base_sha and base_sha != base.sha256():
        raise _mismatch(
            f"{adapter.name} was trained on another version of {base.name} (the model was "
            "imported again since)",
            adapter,
            base,
            expected_base_sha256=base_sha,
            base_sha256=base.sha256(),
        )
    for key, what in (("tokenizer_sha256", "tokenizer"), ("chat_template_sha256", "chat template")):
        wanted = _recorded(adapter, key)
        actual = str(base.attributes.get(key) or base.lineage.get(key) or "")
        if wanted and actual and wanted != actual:
            raise _mismatch(
                f"{adapter.name} was trained with another {what} than {base.name} has",
                adapter,
                base,
                **{f"expected_{key}": wanted, key: actual},
            )
