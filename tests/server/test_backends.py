"""Registry backends: an exported ONNX chain serves the same images as torch; a missing artifact is a reason."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import make_app

pytestmark = pytest.mark.asyncio(loop_scope="module")


def pixels(body: dict) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in body["images"]]).astype(int)


@pytest.mark.slow
async def test_onnxruntime_backend_matches_torch_and_missing_export_is_explained(tiny_models, started, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ddgan.export.onnx_export import export_onnx

    exported = tmp_path / "exported"
    shutil.copytree(tiny_models / "tiny-ddgan", exported)
    export_onnx(exported, exported / "chain.onnx", max_batch=8, verify_batches=(1, 3))
    shutil.copytree(tiny_models / "tiny-ddgan", tmp_path / "not-exported")
    registry = tmp_path / "registry.toml"
    registry.write_text(
        f'[[models]]\ndataset = "mnist"\npath = "{tiny_models / "tiny-ddgan"}"\ndevice = "cpu"\n'
        '[[models]]\ndataset = "onnx"\npath = "exported"\nbackend = "onnxruntime"\ndevice = "cpu"\n'
        '[[models]]\ndataset = "cifar10"\npath = "not-exported"\nbackend = "onnxruntime"\ndevice = "cpu"\n'
    )
    client = await started(make_app(registry))
    models = {m["dataset"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert models["onnx"]["state"] == "ready" and models["onnx"]["backend"] == "onnxruntime"
    assert models["cifar10"]["state"] == "failed" and "ddgan export onnx" in models["cifar10"]["reason"]
    torch_images = (await client.post("/generate", json={"dataset": "mnist", "n": 3, "seed": 40})).json()
    onnx_images = (await client.post("/generate", json={"dataset": "onnx", "n": 3, "seed": 40})).json()
    assert onnx_images["backend"] == "onnxruntime"
    # Same seeds, same noise: equal up to one uint8 level where fp32 rounding straddles a boundary.
    assert np.abs(pixels(torch_images) - pixels(onnx_images)).max() <= 1
