"""Token ids to final output text, token by token: incremental decoding, stop strings, hold-back.

Decoding the whole generated sequence on every step costs O(length) per token (quadratic per
sequence). Here each step decodes only a short window: the tokens since the last emitted
character boundary plus the few before them (their text is subtracted again), which gives the
same text as one full decode for tokenizers whose decoding concatenates (byte-level BPE,
SentencePiece), at constant work per token. Stop strings are searched in the newly decoded text
plus a tail held back from the previous step, which is also what keeps a stop string that is
still being generated out of the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence
# Tokens waiting for a multi-byte character to complete: 4 bytes is the longest UTF-8 character;
# past this the window is emitted as it is, so broken byte runs cannot make the window grow.
MAX_PENDING_TOKENS = 8

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns one sequence's token ids into text; each `push` decodes a bounded window."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # first id of the window: context whose text is already emitted
        self._read = 0  # first id whose text is not emitted yet

    def push(self, token: int) -> str:
        """The new complete text this token makes; empty while a character is incomplete."""
        self._ids.append(token)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        pending = len(self._ids) - self._read
        if text.endswith(REPLACEMENT) and pending < MAX_PENDING_TOKENS:
            return ""
        # The prefix text is a stable prefix of `text` for concatenating decoders; a decoder
        # that rewrites earlier characters (rare) is trusted from the prefix's length on.
        new = text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self._ids)
        return new

    def flush(self) -> str:
        """Whatever is still waiting (an incomplete character decodes to U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :]


class StopChecker:
    """Finds stop strings across pieces of text and holds back what could still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) - 1 for s in self._stops), default=0)
        self._tail = ""  # text not emitted yet: a possible start of a stop string

    def push(self, text: str, *, search: bool, final: bool = False) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string ended the output).

        `search` is False while stop strings do not apply yet (min_tokens); `final` emits the
        held-back tail too.
        """
        buffer = self._tail + text
        if search:
            hits = [i for i in (buffer.find(stop) for stop in self._stops) if i >= 0]
            if hits:
                self._tail = ""
                return buffer[: min(hits)], True
        keep = 0 if final else self._possible_start(buffer)
        self._tail = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def _possible_start(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string (bounded work)."""
        for length in range(min(self._hold, len(buffer)), 0, -1):
            end = buffer[len(buffer) - length :]
            if any(stop.startswith(end) for stop in self._stops):
                return length
        return 0


class OutputText:
    """One sequence's output text: incremental decoding, then stop strings and hold-back."""

    def __init__(self, decode: Decode, stops: Sequence[str]) -> None:
        self.detokenizer = IncrementalDetokenizer(decode)
        self.stops = StopChecker(stops)

    def push(self, token: int, *, search: bool) -> tuple[str, bool]:
        """(new text to send, whether a stop string ended it) after one generated token."""
        return self.stops.push(self.detokenizer.push(token), search=search)

    def finish(self, *, search: bool) -> tuple[str, bool]:
        """The last text when the sequence ends for another reason (length, stop token)."""
        return self.stops.push(self.detokenizer.flush(), search=search, final=True)
