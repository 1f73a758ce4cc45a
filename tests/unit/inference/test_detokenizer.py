"""Incremental detokenizing: the same text as one full decode, constant work per token, stops."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kaito.runtime.inference.detokenizer import (
    MAX_PENDING_TOKENS,
    IncrementalDetokenizer,
    OutputText,
    StopChecker,
)


class ByteVocabulary:
    """A byte-level vocabulary (every byte, plus a few words) that counts its decode work."""

    def __init__(self) -> None:
        self.pieces = [bytes([b]) for b in range(256)] + [b" the", b"Hello", b" world", b"\xc3"]
        self.calls = 0
        self.tokens_decoded = 0

    def ids(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int]) -> str:
        self.calls += 1
        self.tokens_decoded += len(ids)
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def push_all(detokenizer: IncrementalDetokenizer, ids: Sequence[int]) -> list[str]:
    return [detokenizer.push(token) for token in ids]


def test_a_2000_token_generation_costs_no_more_per_token_at_the_end_than_at_the_start() -> None:
    vocabulary = ByteVocabulary()
    detokenizer = IncrementalDetokenizer(vocabulary.decode)
    unit = "Grüße, 東京 🎉 "
    unit += "." * (40 - len(unit.encode()))  # 40 bytes: both measured windows see the same text
    ids = vocabulary.ids(unit * 50)
    assert len(ids) == 2000
    work: list[tuple[int, int]] = []  # (decode calls, tokens decoded) per pushed token
    for token in ids:
        calls, decoded = vocabulary.calls, vocabulary.tokens_decoded
        detokenizer.push(token)
        work.append((vocabulary.calls - calls, vocabulary.tokens_decoded - decoded))
    # From the second 40-byte unit on: the very first token has no context to decode with.
    first, last = work[40:240], work[-200:]
    assert sum(c for c, _ in last) <= sum(c for c, _ in first)
    assert sum(t for _, t in last) <= sum(t for _, t in first)
    assert max(t for _, t in work) <= 3 * MAX_PENDING_TOKENS


def test_pieces_join_to_the_full_decode_and_split_characters_wait_for_their_last_byte() -> None:
    vocabulary = ByteVocabulary()
    text = "Hello world: é, 東京, 🎉 done"
    ids = vocabulary.ids(text)
    pieces = push_all(IncrementalDetokenizer(vocabulary.decode), ids)
    assert "".join(pieces) == vocabulary.decode(ids) == text
    assert "\ufffd" not in "".join(pieces)
    emoji = "🎉".encode()
    held = push_all(IncrementalDetokenizer(vocabulary.decode), list(emoji))
    assert held == ["", "", "", "🎉"]


def test_random_multi_byte_tokens_decode_like_the_whole_sequence() -> None:
    vocabulary = ByteVocabulary()
    rng = random.Random(7)
    words = [256, 257, 258, *vocabulary.ids("ü東🎉ab ")]
    ids = [rng.choice(words) for _ in range(500)]
    detokenizer = IncrementalDetokenizer(vocabulary.decode)
    text = "".join(push_all(detokenizer, ids)) + detokenizer.flush()
    assert text == vocabulary.decode(ids)


def test_a_run_of_broken_bytes_cannot_grow_the_window() -> None:
    vocabulary = ByteVocabulary()
    detokenizer = IncrementalDetokenizer(vocabulary.decode)
    sizes = []
    for _ in range(100):
        before = vocabulary.tokens_decoded
        detokenizer.push(259)  # a lone lead byte: never a complete character
        sizes.append(vocabulary.tokens_decoded - before)
    assert max(sizes) <= 3 * MAX_PENDING_TOKENS


def test_flush_returns_an_incomplete_tail_as_a_replacement_character() -> None:
    vocabulary = ByteVocabulary()
    detokenizer = IncrementalDetokenizer(vocabulary.decode)
    assert push_all(detokenizer, [*vocabulary.ids("ok"), 259]) == ["o", "k", ""]
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.flush() == ""


def test_a_stop_string_split_across_pieces_is_found_and_cut() -> None:
    checker = StopChecker(["o W"])
    assert checker.push("Hello", search=True) == ("Hell", False)  # "o" could start "o W"
    assert checker.push(" World", search=True) == ("", True)


def test_text_that_could_start_a_stop_string_is_held_back_until_it_cannot() -> None:
    checker = StopChecker(["xyz"])
    assert checker.push("abxy", search=True) == ("ab", False)
    assert checker.push("q", search=True) == ("xyq", False)
    assert checker.push("xy", search=True) == ("", False)
    assert checker.push("", search=True, final=True) == ("xy", False)


def test_stop_strings_apply_only_once_searching_starts() -> None:
    checker = StopChecker(["stop"])
    assert checker.push("a stop", search=False) == ("a stop", False)
    assert checker.push(" and st", search=False) == (" and ", False)
    assert checker.push("op", search=True) == ("", True)


@pytest.mark.parametrize("final_search", [True, False])
def test_output_text_flushes_its_tail_when_the_sequence_ends(final_search: bool) -> None:
    vocabulary = ByteVocabulary()
    output = OutputText(vocabulary.decode, ["END"])
    sent = "".join(output.push(t, search=True)[0] for t in vocabulary.ids("the EN"))
    assert sent == "the "
    assert output.finish(search=final_search) == ("EN", False)
