"""Input edges of POST /generate, and the OpenAPI schema describing exactly what the server accepts."""

from __future__ import annotations

import json

import pytest

from ddgan.server.encoding import JSON, PNG, ZIP, negotiate
from ddgan.server.errors import APIError
from tests.server.conftest import error_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

JSON_HEADERS = {"content-type": "application/json"}


@pytest.mark.parametrize("literal", ['"1"', "true", "Infinity", "-Infinity", "NaN", "0", "-1", "[]"])
async def test_timeout_s_must_be_a_finite_positive_number(client, literal):
    body = f'{{"dataset": "mnist", "timeout_s": {literal}}}'.encode()
    response = await client.post("/generate", content=body, headers=JSON_HEADERS)
    assert response.status_code == 422 and error_of(response)["details"][0]["field"] == "body.timeout_s"


async def test_timeout_s_accepts_integers_and_decimals(client):
    for literal in ("5", "2.5"):
        body = f'{{"dataset": "mnist", "timeout_s": {literal}}}'.encode()
        assert (await client.post("/generate", content=body, headers=JSON_HEADERS)).status_code == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    # The depth limit (32) is checked while the body streams in, before any parser recurses: 33 levels are
    # refused, and so are 2040 (once deeper than the recursion limit, whatever torch.compile raised it to).
    [
        (b'{"dataset": "mn\xff\xfeist"}', "not UTF-8"),
        (b'{"dataset": ' + b"[" * 32 + b"]" * 32 + b"}", "nested deeper than 32 levels"),
        (b"[" * 2040 + b"]" * 2040, "nested deeper than 32 levels"),
    ],
    ids=["invalid UTF-8", "33 levels", "2040 levels"],
)
async def test_unparsable_bodies_are_bad_json(client, body, reason):
    response = await client.post("/generate", content=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "bad_json" and reason in error["message"]


async def test_brackets_inside_strings_do_not_count_towards_the_depth(client):
    body = json.dumps({"dataset": "[" * 100 + '\\"{' * 10}).encode()
    response = await client.post("/generate", content=body, headers=JSON_HEADERS)
    error = error_of(response)  # parsed, then validated: only the field's own rule refuses it
    assert response.status_code == 422 and error["details"][0]["field"] == "body.dataset"


async def test_a_body_without_content_type_is_415(client):
    response = await client.post("/generate", content=b'{"dataset": "mnist"}')
    assert "content-type" not in response.request.headers
    assert response.status_code == 415 and error_of(response)["type"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("*/*", JSON),
        ("*/*, application/json;q=0", PNG),  # the specific q=0 excludes JSON from the wildcard
        ("application/*;q=0, */*", PNG),
        ("image/*;q=0, */*;q=0.5", JSON),
        ("image/png;q=0.5, application/zip", ZIP),
        ("image/png, application/json", PNG),  # equal quality: the first listed
        ("application/json;q=0, image/png;q=0, application/zip;q=0", None),
        ("*/*;q=0", None),
        ("image/png;q=2", None),  # q outside 0..1 is not a quality
    ],
)
async def test_accept_negotiation_honours_q(accept, expected):
    if expected is None:
        with pytest.raises(APIError) as refused:
            negotiate(accept)
        assert refused.value.status == 406
    else:
        assert negotiate(accept) == expected


async def test_accept_q0_is_honoured_over_http(client):
    response = await client.post(
        "/generate", json={"dataset": "mnist"}, headers={"accept": "*/*, application/json;q=0"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == PNG


# Bodies valid or invalid under the schema; the server must agree: never a 422 for a valid one, always for
# an invalid one (a valid body may still be refused for what the chosen model cannot do: 400, 404).
SCHEMA_CASES = [
    {"dataset": "mnist"},
    {"dataset": "mnist", "n": 8, "seed": 3},
    {"dataset": "mnist", "n": 9},  # over max_images_per_request (8): the schema's maximum says so
    {"dataset": "mnist", "n": 0},
    {"dataset": "mnist", "steps": 3},  # a DDGAN runs its T: valid under the schema, 400 from the model
    {"dataset": "mnist", "sampler": "ddpm", "steps": 4},
    {"dataset": "mnist", "sampler": "ddpm", "steps": 51},  # beyond this DDPM's training steps: 400
    {"dataset": "mnist", "sampler": "ddpm", "steps": 1001},
    {"dataset": "mnist", "n": 2, "seed": 2**63 - 1},  # seed + n past the largest seed: 400
    {"dataset": "mnist", "seed": -1},
    {"dataset": "mnist", "timeout_s": 0.5},
    {"dataset": "mnist", "timeout_s": "1"},
    {"dataset": "mnist", "timeout_s": True},
    {"dataset": "mnist", "n": True},
    {"dataset": "mnist", "n": 2.0},
    {"dataset": "mnist", "sampler": "gan"},
    {"dataset": "mnist", "colour": "red"},
    {"dataset": "imagenet"},
    {"dataset": ""},
    {"n": 1},
    [1, 2],
]


async def test_the_openapi_schema_describes_what_the_server_accepts(client):
    jsonschema = pytest.importorskip("jsonschema")
    openapi = (await client.get("/openapi.json")).json()
    operation = openapi["paths"]["/generate"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = {**openapi["components"]["schemas"][ref.rsplit("/", 1)[1]], "components": openapi["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    assert str(422) in operation["responses"] and str(400) in operation["responses"]
    for body in SCHEMA_CASES:
        response = await client.post("/generate", content=json.dumps(body).encode(), headers=JSON_HEADERS)
        valid = validator.is_valid(body)
        assert (response.status_code == 422) is (not valid), (body, valid, response.status_code, response.text)
        if valid and response.status_code >= 400:
            assert error_of(response)["type"] in ("unsupported_by_model", "unknown_model"), response.text
