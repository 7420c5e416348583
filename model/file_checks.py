"""What is wrong with a weights file that a loader refused: "empty file", "truncated", "not safetensors" ...

Loaders (safetensors, `torch.load`) fail on damaged files with messages such as `[Errno 22] Invalid argument`,
`invalid load key, '\\x00'` or none at all. These checks read only a file's header and size (never unpickle
anything) and name the damage in words, so an error line tells the user what to do about the file.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

# safetensors: an 8-byte little-endian header length, a JSON header, then the tensor bytes.
_SAFETENSORS_LENGTH_BYTES = 8
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80  # a pickle of protocol >= 2 starts with PROTO (torch's legacy format does)


def _size(path: Path) -> int:
    return os.stat(path).st_size


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a readable safetensors file, or None when its header and size look sound."""
    path = Path(path)
    size = _size(path)
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as handle:
        prefix = handle.read(_SAFETENSORS_LENGTH_BYTES)
        if len(prefix) < _SAFETENSORS_LENGTH_BYTES:
            return f"truncated: {size} bytes, shorter than a safetensors header"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _SAFETENSORS_MAX_HEADER:
            return f"not a safetensors file (its first bytes {_show(prefix)} are no header length)"
        header_end = _SAFETENSORS_LENGTH_BYTES + header_len
        if header_end > size:
            return f"truncated: the header alone needs {header_end} bytes, the file has {size}"
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2
    ]
    needed = _SAFETENSORS_LENGTH_BYTES + header_len + max(ends, default=0)
    if needed > size:
        return f"truncated: its tensors need {needed} bytes, the file has {size}"
    return None


def torch_file_problem(path: str | Path) -> str | None:
    """Why `path` is not a readable `torch.save` file (zip or legacy pickle), or None when it looks sound."""
    path = Path(path)
    size = _size(path)
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as handle:
        prefix = handle.read(4)
    if prefix == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return f"truncated: a zip archive ({size} bytes) without its central directory at the end"
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"damaged zip archive: {exc}"
        if damaged is not None:
            return f"damaged zip archive: member {damaged} fails its checksum"
        return None
    if prefix[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
        return None  # the legacy format: a pickle stream; torch.load's own message says what is wrong in it
    return f"not a zip/pickle file (first bytes {_show(prefix)}): not written by torch.save"


def _show(data: bytes) -> str:
    return data.hex(" ") if data else "none"
