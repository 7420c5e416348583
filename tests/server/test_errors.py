"""Every bad input answers its 4xx in the one error shape, never a 500; auth, models listing, readiness."""

from __future__ import annotations

import pytest

from ddgan.server.settings import ServerSettings
from tests.server.conftest import error_of, make_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

MNIST = {"dataset": "mnist", "n": 1, "seed": 0}

# (description, request kwargs, expected status, expected error type, text the message must contain)
BAD_REQUESTS = [
    ("bad JSON", {"content": b'{"dataset": "mnist", "n": ', "headers": {"content-type": "application/json"}},
     400, "bad_json", "not valid JSON"),
    ("JSON array", {"json": [1, 2]}, 422, "invalid_request", "body"),
    ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}, 422, "invalid_request", "body"),
    ("n as string", {"json": {"dataset": "mnist", "n": "3"}}, 422, "invalid_request", "body.n"),
    ("n as float", {"json": {"dataset": "mnist", "n": 2.5}}, 422, "invalid_request", "body.n"),
    ("n as bool", {"json": {"dataset": "mnist", "n": True}}, 422, "invalid_request", "body.n"),
    ("n zero", {"json": {"dataset": "mnist", "n": 0}}, 422, "invalid_request", "body.n"),
    ("n above the maximum", {"json": {"dataset": "mnist", "n": 9}}, 422, "invalid_request", "between 1 and 8"),
    ("negative seed", {"json": {"dataset": "mnist", "seed": -1}}, 422, "invalid_request", "body.seed"),
    ("seed too large", {"json": {"dataset": "mnist", "seed": 2**70}}, 422, "invalid_request", "body.seed"),
    ("seed + n overflows", {"json": {**MNIST, "n": 2, "seed": 2**63 - 1}}, 400, "unsupported_by_model", "seed"),
    ("dataset missing", {"json": {"n": 1}}, 422, "invalid_request", "body.dataset"),
    ("dataset as number", {"json": {"dataset": 5}}, 422, "invalid_request", "body.dataset"),
    ("unknown field", {"json": {**MNIST, "colour": "red"}}, 422, "invalid_request", "body.colour"),
    ("unknown sampler", {"json": {**MNIST, "sampler": "gan"}}, 422, "invalid_request", "body.sampler"),
    ("steps for ddgan", {"json": {**MNIST, "steps": 3}}, 400, "unsupported_by_model", "always runs its 2 steps"),
    ("ddpm steps > trained", {"json": {**MNIST, "sampler": "ddpm", "steps": 51}}, 400, "unsupported_by_model", "50"),
    ("zero timeout", {"json": {**MNIST, "timeout_s": 0}}, 422, "invalid_request", "body.timeout_s"),
    ("unknown dataset", {"json": {"dataset": "imagenet"}}, 404, "unknown_model", "mnist/ddgan"),
    ("path-like dataset", {"json": {"dataset": "../mnist"}}, 404, "unknown_model", "no model"),
    ("no ddpm for celebahq", {"json": {"dataset": "celebahq", "sampler": "ddpm"}}, 404, "unknown_model", "no model"),
    ("weights not installed", {"json": {"dataset": "celebahq"}}, 404, "model_not_installed",
     "ddgan convert netG_550.pth --preset celebahq -o models/celebahq"),
    ("unsupported Accept", {"json": MNIST, "headers": {"accept": "text/html"}}, 406, "not_acceptable", "image/png"),
    ("Accept q=0 only", {"json": MNIST, "headers": {"accept": "application/json;q=0"}}, 406, "not_acceptable", ""),
    ("form body", {"content": b"dataset=mnist", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     415, "unsupported_media_type", "application/json"),
    ("oversized body", {"json": {**MNIST, "pad": "x" * 5000}}, 413, "payload_too_large", "4096"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("description", "kwargs", "status", "kind", "text"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
async def test_bad_requests_get_their_4xx(client, description, kwargs, status, kind, text):
    response = await client.post("/generate", **kwargs)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["type"] == kind
    assert text in error["message"]
    if status == 422 and kind == "invalid_request" and "body." in text:
        assert any(d["field"].startswith(text) for d in error["details"])
    # The server still serves.
    assert (await client.post("/generate", json=MNIST)).status_code == 200


async def test_streamed_oversized_body_without_length(registry_path, started):
    client = await started(make_app(registry_path, max_body_bytes=1024))

    async def chunks():
        yield b'{"dataset": "mnist", "pad": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}'

    response = await client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_of(response)["type"] == "payload_too_large"


async def test_a_413_by_content_length_is_counted(client):
    def count(text: str) -> float:
        line = 'ddgan_requests_total{model="unknown",sampler="unknown",status="413"} '
        return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)

    before = count((await client.get("/metrics")).text)
    body = b'{"dataset": "mnist", "pad": "' + b"x" * 5000 + b'"}'
    response = await client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and int(response.request.headers["content-length"]) == len(body)
    assert count((await client.get("/metrics")).text) == before + 1


async def test_health_endpoints_answer_head(client):
    for path in ("/healthz", "/readyz"):
        get, head = await client.get(path), await client.head(path)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == "application/json"


async def test_unknown_route_and_method(client):
    assert error_of(await client.get("/nowhere"))["type"] == "not_found"
    response = await client.get("/generate")
    assert response.status_code == 405 and error_of(response)["type"] == "method_not_allowed"


async def test_request_id_is_echoed_when_sane(client):
    response = await client.get("/healthz", headers={"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42" and "total;dur=" in response.headers["server-timing"]
    hostile = await client.get("/healthz", headers={"x-request-id": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc" and len(hostile.headers["x-request-id"]) == 32


async def test_api_key(registry_path, started):
    client = await started(make_app(registry_path, api_key="s3cret"))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
        response = await client.post("/generate", json=MNIST, headers=headers)
        assert response.status_code == 401 and error_of(response)["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/v1/models", headers=headers)).status_code == 401
    ok = await client.post("/generate", json=MNIST, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    # Probes and scrapes stay open.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200


async def test_models_listing(client):
    body = (await client.get("/v1/models")).json()
    assert body["max_images_per_request"] == 8
    models = {(m["dataset"], m["sampler"]): m for m in body["models"]}
    assert set(models) == {("mnist", "ddgan"), ("mnist", "ddpm"), ("celebahq", "ddgan")}
    ddgan, ddpm, celebahq = models["mnist", "ddgan"], models["mnist", "ddpm"], models["celebahq", "ddgan"]
    assert (ddgan["state"], ddgan["ready"], ddgan["steps"], ddgan["resolution"], ddgan["channels"]) == (
        "ready", True, 2, 16, 1,
    )  # fmt: skip
    assert (ddgan["weights"], ddgan["backend"], ddgan["device"], ddgan["max_batch_images"]) == (
        "real",
        "torch",
        "cpu",
        8,
    )
    assert (ddpm["steps"], ddpm["max_steps"], ddpm["weights"]) == (4, 50, "real")
    assert (celebahq["state"], celebahq["ready"], celebahq["weights"]) == ("not_installed", False, None)
    assert celebahq["install"] == "ddgan convert netG_550.pth --preset celebahq -o models/celebahq"
    assert "not installed" in celebahq["reason"]


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    states = {m["model"]: m["state"] for m in ready.json()["models"]}
    assert states == {"mnist/ddgan": "ready", "mnist/ddpm": "ready", "celebahq/ddgan": "not_installed"}
    assert "/generate" in (await client.get("/openapi.json")).json()["paths"]
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize("mode", ["available", "strict"])
async def test_a_broken_model_is_listed_and_the_others_serve(tiny_models, started, tmp_path, mode):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "generator.safetensors").write_bytes(b"garbage")
    registry = tmp_path / "registry.toml"
    registry.write_text(
        f'[[models]]\ndataset = "mnist"\npath = "{tiny_models / "tiny-ddgan"}"\ndevice = "cpu"\n'
        f'[[models]]\ndataset = "cifar10"\npath = "broken"\ndevice = "cpu"\n'
        f'[[models]]\ndataset = "celebahq"\npath = "absent"\ndevice = "cpu"\n'
    )
    client = await started(make_app(registry, readiness=mode))
    ready = await client.get("/readyz")
    # available (default): the server serves every model that could load, so an orchestrator keeps it.
    assert ready.status_code == (200 if mode == "available" else 503)
    body = ready.json()
    assert body["ready"] is (mode == "available") and body["mode"] == mode
    assert [(m["dataset"], m["sampler"], m["state"]) for m in body["failed"]] == [("cifar10", "ddgan", "failed")]
    assert "not valid JSON" in body["failed"][0]["reason"]
    failed = await client.post("/generate", json={"dataset": "cifar10"})
    missing = await client.post("/generate", json={"dataset": "celebahq"})
    assert failed.status_code == 503 and error_of(failed)["type"] == "model_unavailable"
    assert "not valid JSON" in error_of(failed)["message"]
    assert missing.status_code == 404 and "'absent'" in error_of(missing)["message"]
    assert (await client.post("/generate", json=MNIST)).status_code == 200
    # No absolute filesystem path in what clients see (the log keeps them).
    for text in (ready.text, failed.text, missing.text, (await client.get("/v1/models")).text):
        assert str(tmp_path) not in text and str(tiny_models) not in text, text


async def test_missing_backend_is_a_not_ready_reason(tiny_models, started, tmp_path):
    registry = tmp_path / "registry.toml"
    registry.write_text(
        f'[[models]]\ndataset = "mnist"\npath = "{tiny_models / "tiny-ddgan"}"\ndevice = "cpu"\n'
        'backend = "no-such-backend"\n'
    )
    client = await started(make_app(registry))
    model = (await client.get("/v1/models")).json()["models"][0]
    assert model["state"] == "failed" and "no-such-backend" in model["reason"]
    assert (await client.get("/readyz")).status_code == 503


async def test_random_weights_are_announced(tiny_models, started, tmp_path):
    registry = tmp_path / "registry.toml"
    registry.write_text(
        f'[[models]]\ndataset = "mnist"\npath = "{tiny_models / "tiny-ddgan"}"\ndevice = "cpu"\n'
        # No weights installed: --random-weights builds the architecture of the `mnist` preset.
        '[[models]]\ndataset = "digits"\npreset = "mnist"\npath = "absent"\ndevice = "cpu"\nmax_batch_images = 2\n'
    )
    client = await started(make_app(registry, random_weights=True))
    response = await client.post("/generate", json=MNIST)
    assert response.json()["random_weights"] is True and response.headers["x-weights"] == "random"
    digits = await client.post("/generate", json={"dataset": "digits", "n": 2, "seed": 0})
    assert digits.status_code == 200 and digits.json()["width"] == 32 and digits.json()["random_weights"] is True
    models = {m["dataset"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert models["mnist"]["weights"] == models["digits"]["weights"] == "random"
    metrics = (await client.get("/metrics")).text
    assert 'weights="random"' in metrics and 'weights="real"' not in metrics


@pytest.mark.filterwarnings("ignore::pytest.PytestWarning")  # a sync test in this module of async ones
def test_settings_errors_name_the_field(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("DDGAN_MAX_IMAGES_PER_REQUEST", "lots")
    with pytest.raises(ValidationError, match="max_images_per_request"):
        ServerSettings()


async def test_an_unexpected_error_is_a_500_in_the_error_shape(client, monkeypatch):
    runtime = client._transport.app.state.engine  # type: ignore[attr-defined]

    def broken_lookup(dataset: str, sampler: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runtime, "lookup", broken_lookup)
    response = await client.post("/generate", json=MNIST)
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "internal_error" and "a bug" not in error["message"]  # internals stay in the log
    metrics = (await client.get("/metrics")).text
    assert 'ddgan_requests_total{model="unknown",sampler="unknown",status="500"} 1.0' in metrics
    monkeypatch.undo()
    assert (await client.post("/generate", json=MNIST)).status_code == 200
