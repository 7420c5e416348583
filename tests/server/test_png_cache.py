"""Content addresses, ETags, If-None-Match matching and the PNG LRU (server/png_cache.py), without a server."""

from __future__ import annotations

import dataclasses
import re

import pytest

from ddgan.model.sampling import SamplerInfo
from ddgan.server.metrics import ServerMetrics
from ddgan.server.png_cache import CacheUse, ImageAddress, PngCache, none_match

INFO = SamplerInfo(
    kind="ddgan", dataset="mnist", image_shape=(1, 32, 32), default_steps=4, min_steps=4, max_steps=4,
    backend="torch", device="cuda:0", dtype="float32", micro_batch=8, random_weights=False, weights_digest="a" * 64,
)  # fmt: skip


def address(seed: int = 7, **info_changes: object) -> ImageAddress:
    return ImageAddress.of("mnist", dataclasses.replace(INFO, **info_changes), seed, 4, png_level=1)


def test_etag_is_strong_quoted_and_changes_with_every_input():
    etag = address().etag
    assert re.fullmatch(r'"[0-9a-f]{40}"', etag)
    assert address().etag == etag  # a pure function of the inputs
    changed = [
        address(seed=8),
        address(weights_digest="b" * 64),
        address(backend="onnxruntime"),
        address(dtype="float16"),
        address(device="cpu"),
        address(micro_batch=16),
        ImageAddress.of("mnist", INFO, 7, 4, png_level=6),
        ImageAddress.of("mnist", dataclasses.replace(INFO, kind="ddpm", min_steps=1, max_steps=1000), 7, 5, 1),
    ]
    assert len({etag, *(a.etag for a in changed)}) == 1 + len(changed)
    assert address(device="cuda:1").etag == etag  # the device type fixes the kernels, not its index


def test_etag_is_weak_without_batch_invariance():
    assert address(micro_batch=None).etag.startswith('W/"')
    assert not address(micro_batch=None).strong and address().strong


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"{t}"', True),
        ('W/"{t}"', True),  # weak comparison: W/ is ignored on either side
        ('"other", "{t}"', True),
        ('  "other" ,W/"{t}" , "x"', True),
        ("*", True),
        ('"other"', False),
        ('"other", W/"also"', False),
        ("{t}", False),  # unquoted: malformed, matches nothing
        ('"{t}" junk', False),
        ("", False),
    ],
)
def test_if_none_match_forms(header, matches):
    etag = address().etag
    opaque = etag.strip('"')
    assert none_match(None if header is None else header.format(t=opaque), etag) is matches
    weak = address(micro_batch=None).etag
    if header is not None and "{t}" in header:
        assert none_match(header.format(t=weak.removeprefix("W/").strip('"')), weak) is matches


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_lru_keeps_the_budget_evicts_least_recently_used_and_counts():
    metrics = ServerMetrics()
    cache = PngCache(max_bytes=300, observer=metrics)
    first, second, third, fourth = (address(seed) for seed in range(4))
    for key in (first, second, third):
        cache.store(key, bytes(100))
    assert cache.lookup([first]) == [bytes(100)]  # first is now the most recently used
    cache.store(fourth, bytes(100))  # evicts second, the least recently used
    assert [png is not None for png in cache.lookup([first, second, third, fourth])] == [True, False, True, True]
    assert cache.size_bytes == 300 and len(cache) == 3
    labels = {"model": "mnist", "sampler": "ddgan"}
    assert value(metrics, "ddgan_png_cache_hits_total", **labels) == 4
    assert value(metrics, "ddgan_png_cache_misses_total", **labels) == 1
    assert value(metrics, "ddgan_png_cache_evictions_total", **labels) == 1
    assert value(metrics, "ddgan_png_cache_bytes") == 300 and value(metrics, "ddgan_png_cache_entries") == 3

    cache.store(first, bytes(250))  # replacing an entry counts its new size once
    assert cache.size_bytes <= 300 and cache.lookup([first]) == [bytes(250)]
    cache.store(address(99), bytes(301))  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.lookup([address(99)]) == [None] and cache.lookup([first]) == [bytes(250)]


def test_a_weights_change_never_finds_the_old_png():
    cache = PngCache(max_bytes=10_000, observer=ServerMetrics())
    cache.store(address(), b"old weights")
    assert cache.lookup([address(weights_digest="b" * 64)]) == [None]
    assert cache.lookup([address(backend="tensorrt")]) == [None]


def test_request_cache_control_and_a_zero_budget():
    assert CacheUse.of(None) == CacheUse(read=True, write=True)
    assert CacheUse.of("max-age=0, No-Cache") == CacheUse(read=False, write=True)
    assert CacheUse.of("no-store") == CacheUse(read=False, write=False)
    cache = PngCache(max_bytes=1000, observer=ServerMetrics())
    cache.store(address(), b"png")
    assert cache.lookup([address()], CacheUse(read=False)) == [None]
    off = PngCache(max_bytes=0, observer=ServerMetrics())
    off.store(address(), b"png")
    assert off.lookup([address()]) == [None] and len(off) == 0
