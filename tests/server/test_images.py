"""GET /v1/images and the PNG cache shared with /generate, through the ASGI app (HTTP caching: test_images_http)."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from ddgan.model.checkpoint import save_model
from ddgan.model.images import encode_png, make_grid, to_uint8
from ddgan.model.sampler import open_sampler, random_generator
from tests.server.conftest import DDPM_DEFAULT_STEPS, TINY_DDGAN, error_of, make_app, wrapping_loader, write_registry
from tests.server.test_generate import metric
from tests.server.test_reload import ADMIN, registry_text

pytestmark = pytest.mark.asyncio(loop_scope="module")


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


async def test_image_is_the_samplers_image_and_generate_reuses_it(tiny_models, started):
    load, samplers = wrapping_loader(ddgan={})
    client = await started(make_app(write_registry(tiny_models), load_model=load))
    expected = to_uint8(open_sampler(tiny_models / "tiny-ddgan").sample([40, 41, 42, 43]))

    first = await client.get("/v1/images/mnist/ddgan/41.png")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.headers["x-cache"] == "miss" and first.headers["x-seed"] == "41"
    np.testing.assert_array_equal(pixels(first.content), expected[1, ..., 0])
    assert first.content == encode_png(expected[1])  # the served bytes are the PNG of the sampler's image
    calls = len(samplers["ddgan"].calls)

    # /generate of seeds 40..43: only 40, 42, 43 reach the sampler; 41 comes from the cache, same bytes.
    body = (await client.post("/generate", json={"dataset": "mnist", "n": 4, "seed": 40})).json()
    assert body["cached"] == 1
    assert samplers["ddgan"].calls[calls:] == [[40, 42, 43]]
    assert base64.b64decode(body["images"][1]) == first.content
    np.testing.assert_array_equal(np.stack([pixels(base64.b64decode(b)) for b in body["images"]]), expected[..., 0])

    # Everything cached now: no sampler call; the grid mixes decoded cached PNGs correctly.
    calls = len(samplers["ddgan"].calls)
    png = {"accept": "image/png"}
    grid = await client.post("/generate", json={"dataset": "mnist", "n": 4, "seed": 40}, headers=png)
    assert grid.headers["x-cached-images"] == "4" and len(samplers["ddgan"].calls) == calls
    np.testing.assert_array_equal(pixels(grid.content), make_grid(expected)[..., 0])
    again = await client.get("/v1/images/mnist/ddgan/43.png")
    assert again.headers["x-cache"] == "hit" and again.headers["etag"] != first.headers["etag"]
    assert len(samplers["ddgan"].calls) == calls

    # Cache-Control: no-cache regenerates (and still gives the same bytes).
    fresh = await client.get("/v1/images/mnist/ddgan/41.png", headers={"cache-control": "no-cache"})
    assert fresh.headers["x-cache"] == "miss" and fresh.content == first.content
    assert samplers["ddgan"].calls[-1] == [41]

    metrics = (await client.get("/metrics")).text
    ddgan = {"model": "mnist", "sampler": "ddgan"}
    assert metric(metrics, "ddgan_png_cache_hits_total", **ddgan) == 1 + 4 + 1
    assert metric(metrics, "ddgan_png_cache_misses_total", **ddgan) == 1 + 3 + 1
    assert metric(metrics, "ddgan_image_requests_total", status="200", **ddgan) == 3
    assert metric(metrics, "ddgan_png_cache_entries") == 4


async def test_a_small_budget_evicts_and_regenerates(tiny_models, started):
    load, samplers = wrapping_loader(ddgan={})
    images = to_uint8(open_sampler(tiny_models / "tiny-ddgan").sample([0, 1, 2]))
    budget = 2 * max(len(encode_png(image)) for image in images) + 1  # two of the three PNGs fit
    client = await started(make_app(write_registry(tiny_models), load_model=load, png_cache_bytes=budget))
    for seed in (0, 1, 2):  # the third evicts seed 0
        await client.get(f"/v1/images/mnist/ddgan/{seed}.png")
    calls = len(samplers["ddgan"].calls)
    assert (await client.get("/v1/images/mnist/ddgan/2.png")).headers["x-cache"] == "hit"
    assert (await client.get("/v1/images/mnist/ddgan/0.png")).headers["x-cache"] == "miss"  # evicts seed 1
    assert samplers["ddgan"].calls[calls:] == [[0]]
    assert (await client.get("/v1/images/mnist/ddgan/2.png")).headers["x-cache"] == "hit"
    metrics = (await client.get("/metrics")).text
    assert metric(metrics, "ddgan_png_cache_evictions_total", model="mnist", sampler="ddgan") == 2
    assert metric(metrics, "ddgan_png_cache_entries") == 2 and metric(metrics, "ddgan_png_cache_bytes") <= budget


async def test_ddpm_steps_are_part_of_the_address(client, tiny_models):
    default = await client.get("/v1/images/mnist/ddpm/5.png")
    assert default.status_code == 200 and default.headers["x-steps"] == str(DDPM_DEFAULT_STEPS)
    two = await client.get("/v1/images/mnist/ddpm/5.png", params={"steps": 2})
    assert two.headers["x-steps"] == "2" and two.headers["etag"] != default.headers["etag"]
    assert two.content != default.content
    body = (await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm", "seed": 5, "steps": 2})).json()
    assert base64.b64decode(body["images"][0]) == two.content and body["cached"] == 1
    expected = to_uint8(open_sampler(tiny_models / "tiny-ddpm").sample([5], steps=2))
    np.testing.assert_array_equal(pixels(two.content), expected[0, ..., 0])


async def test_errors_keep_the_one_shape(client):
    cases = [
        ("/v1/images/nope/ddgan/1.png", {}, 404, "unknown_model"),
        ("/v1/images/celebahq/ddgan/1.png", {}, 404, "model_not_installed"),
        ("/v1/images/mnist/gan/1.png", {}, 422, "invalid_request"),
        ("/v1/images/mnist/ddgan/seven.png", {}, 422, "invalid_request"),
        ("/v1/images/mnist/ddgan/-1.png", {}, 422, "invalid_request"),
        # valid under the schema (1..1000), but not for this model: 400, never 422
        ("/v1/images/mnist/ddgan/1.png", {"steps": 3}, 400, "unsupported_by_model"),  # a DDGAN runs its own T
        ("/v1/images/mnist/ddpm/1.png", {"steps": 51}, 400, "unsupported_by_model"),  # beyond the tiny DDPM's 50
        ("/v1/images/mnist/ddgan/1.jpg", {}, 404, "not_found"),
    ]
    for path, params, status, kind in cases:
        response = await client.get(path, params=params)
        assert response.status_code == status, (path, response.text)
        assert error_of(response)["type"] == kind, path
    steps = error_of(await client.get("/v1/images/mnist/ddgan/1.png", params={"steps": 3}))
    assert steps["details"][0]["field"] == "query.steps"


async def test_images_need_the_api_key(tiny_models, started):
    client = await started(make_app(write_registry(tiny_models), api_key="sesame"))
    refused = await client.get("/v1/images/mnist/ddgan/1.png")
    assert refused.status_code == 401 and error_of(refused)["type"] == "unauthorized"
    assert "etag" not in refused.headers
    allowed = await client.get("/v1/images/mnist/ddgan/1.png", headers={"authorization": "Bearer sesame"})
    assert allowed.status_code == 200


async def test_openapi_lists_the_image_route(tiny_models):
    schema = make_app(write_registry(tiny_models)).openapi()
    operation = schema["paths"]["/v1/images/{dataset}/{sampler}/{seed}.png"]["get"]
    assert {"200", "304", "404", "422"} <= set(operation["responses"])
    assert "image/png" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} == {"dataset", "sampler", "seed", "steps"}


async def test_a_weights_change_by_hot_reload_changes_the_etag_and_never_serves_old_bytes(
    tiny_models, tmp_path, started
):
    ddgan_dir = tmp_path / "ddgan"
    shutil.copytree(tiny_models / "tiny-ddgan", ddgan_dir)
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_text({"ddgan": ddgan_dir, "ddpm": tiny_models / "tiny-ddpm"}))
    app = make_app(registry, admin_key="admin-secret")
    client = await started(app)
    old = await client.get("/v1/images/mnist/ddgan/5.png")
    assert (await client.get("/v1/images/mnist/ddgan/5.png")).headers["x-cache"] == "hit"

    save_model(ddgan_dir, TINY_DDGAN, random_generator(TINY_DDGAN, seed=99).state_dict())  # new weights
    assert (await client.post("/admin/reload", headers=ADMIN)).json()["changed"] == ["mnist/ddgan"]
    await app.state.reloader.wait_idle()
    new = await client.get("/v1/images/mnist/ddgan/5.png", headers={"if-none-match": old.headers["etag"]})
    assert new.status_code == 200 and new.headers["x-cache"] == "miss"  # the old ETag is no longer current
    assert new.headers["etag"] != old.headers["etag"] and new.content != old.content
    expected = to_uint8(open_sampler(ddgan_dir).sample([5]))
    np.testing.assert_array_equal(pixels(new.content), expected[0, ..., 0])
    body = (await client.post("/generate", json={"dataset": "mnist", "n": 1, "seed": 5})).json()
    assert base64.b64decode(body["images"][0]) == new.content and body["cached"] == 1
