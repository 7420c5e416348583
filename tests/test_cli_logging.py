"""`ddgan` logging: our INFO status lines shown, third-party INFO (onnxscript's ~900 export lines) only with -v."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from ddgan.cli import configure_logging

THIRD_PARTY = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch._inductor", "uvicorn.error")


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """What the root handler prints, with the logging configuration restored afterwards."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers), logging.getLogger("ddgan").level
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    yield stream
    root.setLevel(saved[0])
    root.handlers = saved[1]
    logging.getLogger("ddgan").setLevel(saved[2])


def _emit_all() -> None:
    logging.getLogger("ddgan.export.onnx_export").info("ours: exporting")
    for name in THIRD_PARTY:
        logging.getLogger(name).info("%s: info line", name)
        logging.getLogger(name).warning("%s: warning line", name)


def test_third_party_info_is_quiet_without_verbose(root_stream: io.StringIO) -> None:
    configure_logging(verbose=False)
    _emit_all()
    lines = root_stream.getvalue().splitlines()
    assert lines[0] == "ours: exporting" and not any("info line" in line for line in lines), lines
    assert "onnxscript: warning line" in lines  # warnings still show
    assert logging.getLogger("ddgan.model").isEnabledFor(logging.INFO)
    assert not any(logging.getLogger(name).isEnabledFor(logging.INFO) for name in THIRD_PARTY)


def test_verbose_shows_third_party_info(root_stream: io.StringIO) -> None:
    configure_logging(verbose=True)
    _emit_all()
    lines = root_stream.getvalue().splitlines()
    assert "onnxscript: info line" in lines and "onnx_ir: info line" in lines, lines
