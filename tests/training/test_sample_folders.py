"""`ddgan eval --save-samples` shards scored together with `--samples`: the same figures as one run over the seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.training.classifier import MnistClassifier, save_classifier
from ddgan.training.eval_cli import register
from ddgan.training.sample_folders import SampleFolderError, read_sample_folders


def _eval(*args: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    parsed = parser.parse_args(["eval", *args])
    return parsed.handler(parsed)


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, str]:
    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import get_preset
    from ddgan.model.sampler import random_generator

    config = get_preset("mnist")
    torch.manual_seed(0)
    save_model(tmp_path / "model", config, random_generator(config).state_dict())
    save_classifier(tmp_path / "clf", MnistClassifier().eval(), {"format": "ddgan-mnist-classifier"})
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 60)
    digits = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", x_train=digits, y_train=labels, x_test=digits[:30], y_test=labels[:30])
    return {"model": str(tmp_path / "model"), "clf": str(tmp_path / "clf"), "data": str(tmp_path / "m.npz")}


def _scores(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    return {"modes": report["modes"], "frechet": report["classifier_frechet"], "seeds": report["seeds"]}


def test_shards_score_exactly_as_one_run_over_the_same_seeds(setup: dict[str, str], tmp_path: Path) -> None:
    common = ["--classifier", setup["clf"], "--data", setup["data"], "--batch-size", "4", "--no-progress"]
    one = ["--seed", "10", "--n", "7", "--out", str(tmp_path / "one.json")]
    assert _eval("--model", setup["model"], *one, *common) == 0
    for seed, n, folder in (("10", "3", "a"), ("13", "4", "b")):
        shard = ["--seed", seed, "--n", n, "--save-samples", str(tmp_path / folder)]
        assert _eval("--model", setup["model"], *shard, *common) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir())[-1] == "samples-00000013-00000016.json"
    shards = ["--samples", str(tmp_path / "a"), str(tmp_path / "b")]
    assert _eval(*shards, "--out", str(tmp_path / "shards.json"), *common) == 0

    assert _scores(tmp_path / "shards.json") == _scores(tmp_path / "one.json")
    report = json.loads((tmp_path / "shards.json").read_text())
    assert report["sampler"] == "ddgan" and report["steps"] == 4 and report["num_samples"] == 7
    assert report["seeds_contiguous"] is True and report["model"] == setup["model"]
    assert report["provenance"]["device"] == "cpu" and len(report["provenance"]["weights_digest"]) == 64

    assert _eval(*shards, "--n", "5", "--out", str(tmp_path / "five.json"), *common) == 0
    assert json.loads((tmp_path / "five.json").read_text())["seeds"] == [10, 14]


def test_an_npz_archive_scores_as_the_run_that_wrote_it_and_mixes_with_folders(
    setup: dict[str, str], tmp_path: Path
) -> None:
    common = ["--classifier", setup["clf"], "--data", setup["data"], "--batch-size", "4", "--no-progress"]
    one = ["--seed", "0", "--n", "6", "--out", str(tmp_path / "one.json")]
    assert _eval("--model", setup["model"], *one, "--save-samples", str(tmp_path / "all.npz"), *common) == 0
    with np.load(tmp_path / "all.npz", allow_pickle=False) as archive:
        assert archive["images"].shape == (6, 32, 32, 1) and archive["images"].dtype == np.uint8
        assert archive["seeds"].tolist() == list(range(6))
        assert json.loads(str(archive["manifest"]))["seeds"] == [0, 5]
    assert _eval("--samples", str(tmp_path / "all.npz"), "--out", str(tmp_path / "npz.json"), *common) == 0
    assert _scores(tmp_path / "npz.json") == _scores(tmp_path / "one.json")

    # an archive shard beside a folder shard of the same model is one sample set
    shards = [("0", "2", tmp_path / "low.npz"), ("2", "4", tmp_path / "high")]
    for seed, n, target in shards:
        assert _eval("--model", setup["model"], "--seed", seed, "--n", n, "--save-samples", str(target), *common) == 0
    mixed = ["--samples", str(tmp_path / "low.npz"), str(tmp_path / "high")]
    assert _eval(*mixed, "--out", str(tmp_path / "mixed.json"), *common) == 0
    assert _scores(tmp_path / "mixed.json") == _scores(tmp_path / "one.json")
    with pytest.raises(SampleFolderError, match=r"seed 0 is in two places: .*all.npz \(seed 0\)"):
        read_sample_folders([str(tmp_path / "all.npz"), str(tmp_path / "low.npz")])

    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 32, 32), np.uint8), seeds=np.arange(2))
    with pytest.raises(SampleFolderError, match=r"images must be \(N, H, W, 1 or 3\) uint8"):
        read_sample_folders([str(tmp_path / "bad.npz")])
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 32, 32, 1), np.uint8), seeds=np.arange(3))
    with pytest.raises(SampleFolderError, match="seeds must be one integer per image"):
        read_sample_folders([str(tmp_path / "bad.npz")])
    (tmp_path / "bad.npz").write_bytes(b"PK truncated")
    with pytest.raises(SampleFolderError, match="not a readable .npz samples archive"):
        read_sample_folders([str(tmp_path / "bad.npz")])


def _png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


def test_folders_without_a_manifest_score_with_unknown_provenance(tmp_path: Path) -> None:
    for seed in (5, 2, 9):
        _png(tmp_path / f"{seed:08d}.png", np.full((32, 32), seed * 20, np.uint8))
    (tmp_path / "grid.png").write_bytes(b"ignored: not a sample name")
    found = read_sample_folders([str(tmp_path)])
    assert found.seeds == [2, 5, 9] and found.identity is None
    assert found.images.shape == (3, 1, 32, 32)
    # the 8-bit level v maps to v / 127.5 - 1, as ddgan eval scores its own samples
    assert torch.equal(found.images[:, 0, 0, 0], torch.tensor([40, 100, 180]) / 127.5 - 1)


def test_sample_folders_that_are_not_one_sample_set_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    gray = np.zeros((32, 32), np.uint8)
    _png(a / "00000001.png", gray)
    _png(b / "00000001.png", gray)
    with pytest.raises(SampleFolderError, match="seed 1 is in two places"):
        read_sample_folders([str(a), str(b)])

    _png(b / "00000001.png", np.zeros((28, 28), np.uint8))
    (b / "00000001.png").rename(b / "00000002.png")
    with pytest.raises(SampleFolderError, match=r"00000002.png is \(28, 28, 1\), the first sample is \(32, 32, 1\)"):
        read_sample_folders([str(a), str(b)])

    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(b / "00000002.png")
    with pytest.raises(SampleFolderError, match="a RGBA image"):
        read_sample_folders([str(a), str(b)])
    (b / "00000002.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(SampleFolderError, match="not a readable PNG"):
        read_sample_folders([str(a), str(b)])
    (b / "00000002.png").unlink()

    with pytest.raises(SampleFolderError, match="--n 3: the sources hold only 1 samples"):
        read_sample_folders([str(a), str(b)], limit=3)
    with pytest.raises(SampleFolderError, match="neither a folder nor a .npz samples archive"):
        read_sample_folders([str(tmp_path / "missing")])
    with pytest.raises(SampleFolderError, match="no samples"):
        read_sample_folders([str(b)])

    identity = {"format": "ddgan-eval-samples", "sampler": "ddpm", "steps": 1000, "seeds": [0, 0]}
    (a / "samples-00000000-00000000.json").write_text(json.dumps(identity))
    with pytest.raises(SampleFolderError, match="not in any manifest's seed range"):
        read_sample_folders([str(a)])
    (b / "samples-00000001-00000001.json").write_text(json.dumps({**identity, "steps": 100, "seeds": [1, 1]}))
    with pytest.raises(SampleFolderError, match="disagree on steps"):
        read_sample_folders([str(a), str(b)])
    (b / "samples-00000001-00000001.json").write_text('{"format": "something else"}')
    with pytest.raises(SampleFolderError, match="not a samples manifest"):
        read_sample_folders([str(a), str(b)])


def test_eval_refuses_samples_with_flags_that_need_a_model(setup: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--save-samples and --steps need --model"):
        _eval("--samples", str(tmp_path), "--steps", "10", "--classifier", setup["clf"])
    with pytest.raises(SystemExit, match="ddgan eval: --samples .*neither a folder nor a .npz"):
        _eval("--samples", str(tmp_path / "missing"), "--classifier", setup["clf"])
