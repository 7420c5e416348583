"""Content-addressed PNGs: an image's address and ETag, `If-None-Match` matching, and the in-process PNG LRU.

An image is a pure function of (weights digest, backend, dtype, device type, forward-pass rows, seed, steps), and
its PNG bytes of that plus the zlib level: `ImageAddress` is that tuple, its ETag a digest of it. The LRU keys on
the whole address, so a weights change (new digest) or another backend can never be answered with old bytes.
Without `batch_invariant` (no fixed forward-pass rows) the last bits depend on batch neighbours: the ETag is weak.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Protocol

from ddgan.model.sampling import SamplerInfo

# Bump when the PNG encoding itself changes (encoder, colour type): every ETag changes with it.
ENCODING_VERSION = 1
IMMUTABLE = "public, max-age=31536000, immutable"
_ENTITY_TAG = re.compile(r'\s*(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


@dataclass(frozen=True)
class ImageAddress:
    dataset: str  # the registry's name (the metrics' model label)
    sampler: str
    weights_digest: str
    backend: str
    dtype: str
    device_type: str  # cuda:0 and cuda:1 run the same kernels
    micro_batch: int | None
    steps: int
    seed: int
    png_level: int

    @classmethod
    def of(cls, dataset: str, info: SamplerInfo, seed: int, steps: int, png_level: int) -> ImageAddress:
        return cls(
            dataset=dataset,
            sampler=info.kind,
            weights_digest=info.weights_digest,
            backend=info.backend,
            dtype=info.dtype,
            device_type=info.device.partition(":")[0],
            micro_batch=info.micro_batch,
            steps=steps,
            seed=seed,
            png_level=png_level,
        )

    @property
    def strong(self) -> bool:
        """Bit-identical in any batch only when every forward pass has the same rows."""
        return self.micro_batch is not None

    @property
    def etag(self) -> str:
        fields = {**asdict(self), "encoding": ENCODING_VERSION}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40]
        return f'"{digest}"' if self.strong else f'W/"{digest}"'


def none_match(if_none_match: str | None, etag: str) -> bool:
    """True when `If-None-Match` matches `etag`: `*`, or any listed tag by weak comparison (RFC 9110 13.1.2).

    A malformed header matches nothing: the client gets the full answer, never a wrong 304.
    """
    if if_none_match is None:
        return False
    header = if_none_match.strip()
    if header == "*":
        return True
    opaque = etag.removeprefix("W/").strip('"')
    position, tags = 0, []
    while position < len(header):
        found = _ENTITY_TAG.match(header, position)
        if found is None:
            return False
        tags.append(found.group(1))
        position = found.end()
    return opaque in tags


@dataclass(frozen=True)
class CacheUse:
    """What one request lets the cache do: `Cache-Control: no-cache` regenerates, `no-store` also keeps nothing."""

    read: bool = True
    write: bool = True

    @classmethod
    def of(cls, cache_control: str | None) -> CacheUse:
        directives = {part.split("=")[0].strip().lower() for part in (cache_control or "").split(",")}
        no_store = "no-store" in directives
        return cls(read=not (no_store or "no-cache" in directives), write=not no_store)


class CacheObserver(Protocol):
    """Where the cache reports its events (`server.metrics.ServerMetrics`)."""

    def png_cache_hits(self, model: str, sampler: str, count: int) -> None: ...

    def png_cache_misses(self, model: str, sampler: str, count: int) -> None: ...

    def png_cache_evicted(self, model: str, sampler: str) -> None: ...

    def png_cache_size(self, entries: int, size_bytes: int) -> None: ...


class PngCache:
    """Least-recently-used encoded PNGs within a byte budget (0 disables it). Thread-safe."""

    def __init__(self, max_bytes: int, observer: CacheObserver) -> None:
        self.max_bytes = max_bytes
        self.observer = observer
        self._entries: OrderedDict[ImageAddress, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, addresses: list[ImageAddress], use: CacheUse = CacheUse()) -> list[bytes | None]:
        """The cached PNG of each address (None: not cached, or the request asked to regenerate); counts them."""
        if not use.read:
            self.observer.png_cache_misses(addresses[0].dataset, addresses[0].sampler, len(addresses))
            return [None] * len(addresses)
        with self._lock:
            found = [self._entries.get(address) for address in addresses]
            for address, png in zip(addresses, found, strict=True):
                if png is not None:
                    self._entries.move_to_end(address)
        if addresses:
            hits = sum(png is not None for png in found)
            first = addresses[0]
            if hits:
                self.observer.png_cache_hits(first.dataset, first.sampler, hits)
            if hits < len(addresses):
                self.observer.png_cache_misses(first.dataset, first.sampler, len(addresses) - hits)
        return found

    def store(self, address: ImageAddress, png: bytes) -> None:
        """Keep `png`, evicting the least recently used; a PNG larger than the whole budget is not kept."""
        if len(png) > self.max_bytes:
            return
        evicted: list[ImageAddress] = []
        with self._lock:
            previous = self._entries.pop(address, None)
            if previous is not None:
                self._bytes -= len(previous)
            self._entries[address] = png
            self._bytes += len(png)
            while self._bytes > self.max_bytes:
                old, old_png = self._entries.popitem(last=False)
                self._bytes -= len(old_png)
                evicted.append(old)
            entries, size = len(self._entries), self._bytes
        for old in evicted:
            self.observer.png_cache_evicted(old.dataset, old.sampler)
        self.observer.png_cache_size(entries, size)
