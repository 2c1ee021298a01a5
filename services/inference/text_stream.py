"""Generated token ids -> streamed text: incremental detokenization and stop sequences.

Text cannot be produced token by token with `decode([id])`: a byte-level BPE splits one character
over several tokens, and SentencePiece decoders change a token's text by what precedes it. So the
decoder re-decodes a short window of the sequence (the tokens since the last emission plus the
ones before them, as TGI does) and emits the new suffix only once it no longer ends in an
incomplete character (U+FFFD). Stop sequences are then cut from the text; a tail that could still
become one is held back until it is known not to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    """Token ids in, text deltas out, each delta free of split characters."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        # ids[prefix:read] were already turned into text; decoding starts at `prefix` so the
        # decoder sees the same left context it saw then.
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end is emitted as is)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) and not final:
            return ""
        if after.endswith(REPLACEMENT_CHARACTER) and not final:
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


class StopSequences:
    """Cuts the text at the first stop sequence; holds back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, delta: str) -> str:
        """The part of the text that is now safe to send; sets `stopped` on a stop sequence."""
        if self.stopped or not delta:
            return ""
        search_from = max(self._sent, len(self._text) - self._longest + 1, 0)
        self._text += delta
        hits = [i for s in self._stops if (i := self._text.find(s, search_from)) >= 0]
        if hits:
            self.stopped = True
            return self._take(min(hits))
        return self._take(len(self._text) - self._held_back())

    def flush(self) -> str:
        """At the end of the generation nothing can become a stop sequence any more."""
        return "" if self.stopped else self._take(len(self._text))

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop sequence."""
        for size in range(min(self._longest - 1, len(self._text) - self._sent), 0, -1):
            tail = self._text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0

    def _take(self, end: int) -> str:
        end = max(end, self._sent)
        out = self._text[self._sent : end]
        self._sent = end
        return out


class TextAssembler:
    """Both steps: token ids in, the text to send out, and whether a stop sequence ended it."""

    def __init__(self, decode: Decode, stops: Sequence[str]) -> None:
        self._decoder = IncrementalDecoder(decode)
        self._stops = StopSequences(stops)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def push(self, token_id: int) -> str:
        return self._stops.push(self._decoder.push(token_id))

    def flush(self) -> str:
        return self._stops.push(self._decoder.flush()) + self._stops.flush()
