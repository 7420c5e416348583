"""`ddgan bench quality` on tiny random models: same seeds everywhere, metrics as `ddgan eval`, resume, plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.bench.cli import register
from ddgan.bench.quality import configurations
from ddgan.bench.quality_plot import pareto_front, plot_pareto
from ddgan.model.checkpoint import save_model
from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
from ddgan.model.images import to_uint8, uint8_to_float
from ddgan.model.noise import image_seeds
from ddgan.model.sampler import open_sampler, random_generator
from ddgan.training.classifier import MnistClassifier, classify, load_mnist_npz, save_classifier, to_input
from ddgan.training.evaluation import frechet_distance_of

N, SEED = 6, 40

TINY_GRAY = ModelConfig(
    preset="tiny-gray",
    generator=GeneratorConfig(
        num_channels=1,
        num_channels_dae=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        image_size=16,
        nz=4,
        z_emb_dim=8,
        n_mlp=1,
    ),
    diffusion=DiffusionConfig(num_timesteps=2),
    dataset="tiny-gray",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from diffusers import DDPMScheduler

    from ddgan.model.ddpm_io import build_unet, save_ddpm

    root = tmp_path_factory.mktemp("quality")
    ddgan = save_model(root / "ddgan", TINY_GRAY, random_generator(TINY_GRAY, seed=3).state_dict())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    ddpm = save_ddpm(root / "ddpm", build_unet("tiny", num_channels=1, seed=4), scheduler, dataset="tiny-gray")
    torch.manual_seed(5)
    save_classifier(root / "classifier", MnistClassifier().eval(), {"format": "ddgan-mnist-classifier"})
    rng = np.random.default_rng(0)
    digits = {key: rng.integers(0, 256, (24, 28, 28), dtype=np.uint8) for key in ("x_train", "x_test")}
    np.savez(root / "mnist.npz", **digits, y_train=np.zeros(24, np.uint8), y_test=np.zeros(24, np.uint8))
    return {"root": root, "ddgan": ddgan, "ddpm": ddpm, "classifier": root / "classifier", "data": root / "mnist.npz"}


def _bench(setup: dict, *extra: str, steps: str = "2,3") -> dict:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = setup["root"] / "quality.json"
    args = parser.parse_args(
        ["bench", "quality", "--ddpm", str(setup["ddpm"]), "--ddpm-steps", steps, "--ddgan", str(setup["ddgan"])]
        + ["--classifier", str(setup["classifier"]), "--data", str(setup["data"]), "--n", str(N)]
        + ["--seed", str(SEED), "--batch-size", "4", "--out", str(out), *extra]
    )
    assert args.handler(args) == 0
    return json.loads(out.read_text())


def test_configurations_put_ddgan_first_then_ddpm_by_cost():
    runs = configurations("d", [100, 10, 1000], ["g1", "g2"])
    assert runs == [{"model": "g1", "steps": None}, {"model": "g2", "steps": None}] + [
        {"model": "d", "steps": s} for s in (10, 100, 1000)
    ]
    assert configurations("", [10], ["g"]) == [{"model": "g", "steps": None}]


def test_pareto_front_keeps_only_undominated_rows():
    rows = [
        {"name": "a", "cpu_ms_per_image": 1.0, "wall_ms_per_image": 9.0, "classifier_fd": 50.0},
        {"name": "b", "cpu_ms_per_image": 2.0, "wall_ms_per_image": 2.0, "classifier_fd": 60.0},
        {"name": "c", "cpu_ms_per_image": 10.0, "wall_ms_per_image": 10.0, "classifier_fd": 40.0},
        {"name": "d", "cpu_ms_per_image": 100.0, "wall_ms_per_image": 100.0, "classifier_fd": 40.0},  # = c, slower
        {"name": "e", "cpu_ms_per_image": 1000.0, "wall_ms_per_image": 1000.0, "classifier_fd": 30.0},
    ]
    assert [r["name"] for r in pareto_front(rows)] == ["a", "c", "e"]  # b: slower and worse than a on CPU
    assert [r["name"] for r in pareto_front(rows, "wall")] == ["b", "a", "c", "e"]  # on wall time b is fastest


@pytest.mark.slow
def test_sweep_scores_the_same_seeds_as_direct_sampling_and_resumes(setup):
    report = _bench(setup)
    rows = {(Path(r["model"]).name, r["steps"]): r for r in report["results"]}
    assert set(rows) == {("ddgan", 2), ("ddpm", 2), ("ddpm", 3)}
    assert report["environment"]["command"].startswith("ddgan ")
    x_train, _, x_test, _ = load_mnist_npz(setup["data"])
    from ddgan.training.classifier import load_classifier

    classifier, _ = load_classifier(setup["classifier"])
    _, test_features = classify(classifier, to_input(x_test))
    for (name, steps), row in rows.items():
        assert row["seeds"] == [SEED, SEED + N - 1] and row["n"] == N
        assert row["wall_ms_per_image"] > 0 and row["cpu_ms_per_image"] > 0
        assert row["num_modes"] == 10 and sum(row["histogram"]) == N
        assert 1 <= row["modes_covered"] <= 10 and row["kl_to_uniform"] >= 0
        # the independent path: the sampler itself on those seeds, quantised as PNG stores them
        images = open_sampler(setup[name]).sample(image_seeds(SEED, N), steps=steps)
        probabilities, features = classify(classifier, uint8_to_float(to_uint8(images), channels_last=True))
        assert row["classifier_fd"] == pytest.approx(frechet_distance_of(features, test_features), rel=1e-6)
        assert row["histogram"] == np.bincount(probabilities.argmax(1), minlength=10).tolist()
    # the cheaper DDPM differs from the dearer one: the step count really reached the sampler
    assert rows[("ddpm", 2)]["classifier_fd"] != rows[("ddpm", 3)]["classifier_fd"]

    before = report["results"]
    resumed = _bench(setup, "--resume", steps="2,3,4")
    assert resumed["results"][: len(before)] == before  # kept, not re-measured
    assert [(Path(r["model"]).name, r["steps"]) for r in resumed["results"][len(before) :]] == [("ddpm", 4)]


@pytest.mark.slow
def test_plot_is_a_png_or_skipped_without_matplotlib(setup, tmp_path, caplog):
    report = _bench(setup, "--resume")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        out = str(setup["root"] / "quality.json")
        args = parser.parse_args(
            ["bench", "quality", "--data", "x", "--out", out, "--plot", str(tmp_path / "p.png"), "--plot-only"]
        )
        assert args.handler(args) == 0
        assert not (tmp_path / "p.png").exists() and "matplotlib is not installed" in caplog.text
        return
    path = plot_pareto(report["results"], tmp_path / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
