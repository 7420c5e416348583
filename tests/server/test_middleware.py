"""The JSON depth limit's scanner against the depth of the parsed document, whatever the chunking."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ddgan.server.middleware import JSONDepthScanner


def parsed_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((parsed_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((parsed_depth(v) for v in value), default=0)
    return 0


DOCUMENTS = [
    {"dataset": "mnist", "n": 4, "seed": 7},
    {"a": [[1, [2, {"b": []}]], {}], "c": "x"},
    {"brackets in a string": "[[[{{{", "escaped quote": 'he said "[" \\', "tail": [[[]]]},
    {"unicode": "\u00e9[\u2603]", "path\\": ["\\\\", '\\"[', [{"k": "]]]"}]]},
    [[[[[[[[1]]]]]]]],
]


def scanned_max_depth(text: bytes, cuts: list[int]) -> int:
    """The smallest limit the scanner accepts `text` under, fed in pieces split at `cuts`."""
    for limit in range(0, 64):
        scanner = JSONDepthScanner(limit)
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        if all(scanner.feed(piece) for piece in pieces):
            return limit
    raise AssertionError("deeper than 64")


@pytest.mark.parametrize("document", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_depth_matches_the_parsed_document_at_every_chunking(document):
    text = json.dumps(document, ensure_ascii=False).encode()
    expected = parsed_depth(document)
    rng = random.Random(0)
    # Every single cut (so every byte, a backslash included, ends a chunk once), then random multi-cuts.
    chunkings = [[cut] for cut in range(1, len(text))] + [
        sorted(rng.sample(range(1, len(text)), k=min(5, len(text) - 1))) for _ in range(20)
    ]
    for cuts in [[], *chunkings]:
        assert scanned_max_depth(text, cuts) == expected, cuts


def test_an_escaped_backslash_before_a_quote_closes_the_string():
    # "\\" is one backslash: the quote after it ends the string, so the bracket that follows counts.
    scanner = JSONDepthScanner(1)
    assert scanner.feed(b'["\\\\", ') and not scanner.feed(b"[")


def test_invalid_json_is_scanned_without_error():
    scanner = JSONDepthScanner(3)
    assert scanner.feed(b"]]]}}{") and scanner.feed(b'"unterminated [[[[[[')
    assert not JSONDepthScanner(3).feed(b"[" * 4)
