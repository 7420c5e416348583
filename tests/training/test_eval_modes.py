"""MNIST classifier I/O, mode coverage (10 digits, 1000 Stacked-MNIST modes), KL to uniform, the eval command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.training.classifier import (
    ClassifierError,
    ClassifierTrainConfig,
    MnistClassifier,
    accuracy,
    classify,
    fit_input,
    load_classifier,
    load_mnist_npz,
    save_classifier,
    to_input,
    train_classifier,
)
from ddgan.training.eval_cli import register
from ddgan.training.evaluation import kl_to_uniform
from ddgan.training.mode_coverage import (
    classifier_frechet,
    classify_samples,
    format_report,
    mode_report,
    perfect_sampler_kl,
    samples_by_class,
    stack_digits,
    stacked_mode_report,
)

REPO = Path(__file__).resolve().parents[2]
SHARED_MNIST = REPO / ".." / "shared" / "data" / "mnist.npz"
BUNDLED_CLASSIFIER = REPO / "models" / "mnist-classifier"


def test_kl_to_uniform_closed_forms():
    assert kl_to_uniform(np.full(10, 7)) == pytest.approx(0.0)
    assert kl_to_uniform(np.eye(1000)[3] * 26_000) == pytest.approx(math.log(1000))
    assert kl_to_uniform(np.array([1, 1, 0, 0])) == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        kl_to_uniform(np.zeros(5))


def test_mode_report_of_one_hot_predictions():
    labels = np.array([0, 0, 1, 2, 2, 2])
    probs = np.eye(10)[labels] * 0.9 + 0.01  # rows sum to 1, max 0.91
    report = mode_report(probs)
    assert report.modes_covered == 3
    assert report.histogram[:4] == [2, 1, 3, 0]
    assert report.mean_confidence == pytest.approx(0.91)
    p = np.array([2, 1, 3]) / 6
    assert report.kl_to_uniform == pytest.approx(float(np.sum(p * np.log(10 * p))))
    assert "3 / 10" in format_report(report, None)


def test_samples_by_class_keeps_seed_order_and_marks_missing_classes():
    labels = np.array([3, 1, 3, 3, 1, 3])
    confidence = np.array([0.2, 0.9, 0.99, 0.5, 0.4, 0.95])
    probs = np.eye(10)[labels] * confidence[:, None]
    table = samples_by_class(probs, per_class=3)
    assert table.shape == (10, 3)
    assert table[3].tolist() == [0, 2, 3]  # first three in seed order, not the three most confident
    assert table[1].tolist() == [1, 4, -1]
    assert (table[[0, 2, 4, 5, 6, 7, 8, 9]] == -1).all()


def test_stacked_modes_cover_all_1000_triples():
    triples = np.array([(r, g, b) for r in range(10) for g in range(10) for b in range(10)] * 2)
    probs = np.eye(10)[triples]  # (2000, 3, 10)
    report = stacked_mode_report(probs)
    assert report.modes_covered == 1000
    assert report.kl_to_uniform == pytest.approx(0.0, abs=1e-12)
    assert report.histogram[100 * 3 + 10 * 4 + 5] == 2  # mode = 100·R + 10·G + B


def test_stacked_single_mode():
    probs = np.tile(np.eye(10)[[7, 0, 2]], (50, 1, 1))
    report = stacked_mode_report(probs)
    assert report.modes_covered == 1
    assert report.histogram[702] == 50
    assert report.kl_to_uniform == pytest.approx(math.log(1000))


def test_perfect_sampler_kl_floor():
    assert perfect_sampler_kl(26_000, 1000) == pytest.approx(999 / 52_000)


def test_fit_input_crops_the_mnist_pad_and_resizes_others():
    x = torch.full((2, 1, 32, 32), -1.0)
    x[:, :, 2:30, 2:30] = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(fit_input(x), x[:, :, 2:30, 2:30])
    assert fit_input(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 28, 28)
    with pytest.raises(ValueError):
        fit_input(torch.zeros(1, 3, 28, 28))


def test_classifier_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MnistClassifier().eval()
    save_classifier(tmp_path / "clf", model, {"format": "ddgan-mnist-classifier", "test_accuracy": 0.5})
    loaded, meta = load_classifier(tmp_path / "clf")
    assert meta["test_accuracy"] == 0.5
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    probs, features = classify(loaded, x)
    expected_probs, expected_features = classify(model, x)
    np.testing.assert_allclose(probs, expected_probs)
    assert probs.shape == (5, 10) and features.shape == (5, 128)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ClassifierError, match="train-classifier"):
        load_classifier(tmp_path / "nothing")


def test_three_channel_samples_are_classified_per_channel():
    torch.manual_seed(0)
    model = MnistClassifier().eval()
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    probs, features = classify_samples(model, x)
    assert probs.shape == (4, 3, 10) and features.shape == (4, 384)
    green_probs, green_features = classify(model, x[:, 1:2])
    np.testing.assert_allclose(probs[:, 1], green_probs, rtol=1e-6)
    np.testing.assert_allclose(features[:, 128:256], green_features, rtol=1e-6)


def test_stack_digits_is_seeded():
    digits = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    a, b = stack_digits(digits, 5, seed=3), stack_digits(digits, 5, seed=3)
    assert a.shape == (5, 3, 28, 28)
    torch.testing.assert_close(a, b)


def _fake_mnist(path: Path, n: int = 120) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):  # a bar whose row encodes the label: learnable in a few steps
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    np.savez(path, x_train=images, y_train=labels, x_test=images[:40], y_test=labels[:40])


def test_train_classifier_on_tiny_data(tmp_path):
    _fake_mnist(tmp_path / "m.npz")
    model, meta = train_classifier(tmp_path / "m.npz", ClassifierTrainConfig(epochs=3, batch_size=16, max_shift=0))
    assert meta["test_accuracy"] > 0.5
    assert meta["format"] == "ddgan-mnist-classifier" and len(meta["data_sha256"]) == 64


def test_train_classifier_command_rejects_missing_data(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    parsed = parser.parse_args(["train-classifier", "--data", str(tmp_path / "no.npz"), "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="ddgan train-classifier: MNIST data not found"):
        parsed.handler(parsed)
    assert not (tmp_path / "c").exists()


def test_classifier_frechet_real_baseline_is_small(tmp_path):
    _fake_mnist(tmp_path / "m.npz")
    x_train, _, x_test, _ = load_mnist_npz(tmp_path / "m.npz")
    torch.manual_seed(0)
    model = MnistClassifier().eval()
    _, real_features = classify_samples(model, to_input(x_test))
    _, noise_features = classify_samples(model, torch.rand(40, 1, 28, 28) * 2 - 1)
    same = classifier_frechet(model, real_features, x_train, x_test, channels=1)
    noise = classifier_frechet(model, noise_features, x_train, x_test, channels=1)
    # 40 samples in 128-d: singular covariances, so the 1e-6 diagonal regularisation applies
    assert same.generated_vs_test == pytest.approx(0.0, abs=1e-3)
    assert noise.generated_vs_test > same.real_train_vs_test
    assert noise.real_train_vs_test == same.real_train_vs_test


def test_bad_npz_is_rejected(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 28, 28)))
    with pytest.raises(ClassifierError, match="lacks"):
        load_mnist_npz(tmp_path / "bad.npz")
    with pytest.raises(ClassifierError, match="not found"):
        load_mnist_npz(tmp_path / "missing.npz")


@pytest.mark.skipif(not (SHARED_MNIST.is_file() and BUNDLED_CLASSIFIER.is_dir()), reason="needs shared MNIST")
def test_bundled_classifier_is_accurate():
    model, meta = load_classifier(BUNDLED_CLASSIFIER)
    _, _, x_test, y_test = load_mnist_npz(SHARED_MNIST)
    assert meta["test_accuracy"] >= 0.99
    assert accuracy(model, to_input(x_test[:2000]), torch.from_numpy(y_test[:2000])) >= 0.985


def test_eval_command_on_a_random_weights_model(tmp_path):
    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import get_preset
    from ddgan.model.sampler import random_generator

    config = get_preset("mnist")
    save_model(tmp_path / "model", config, random_generator(config).state_dict())
    torch.manual_seed(0)
    save_classifier(tmp_path / "clf", MnistClassifier().eval(), {"format": "ddgan-mnist-classifier"})
    _fake_mnist(tmp_path / "m.npz")
    out = tmp_path / "report.json"
    args = [
        "eval",
        "--model",
        str(tmp_path / "model"),
        "--classifier",
        str(tmp_path / "clf"),
        "--n",
        "6",
        "--batch-size",
        "4",
        "--data",
        str(tmp_path / "m.npz"),
        "--out",
        str(out),
        "--grid",
        str(tmp_path / "g.png"),
        "--class-grid",
        str(tmp_path / "classes.png"),
    ]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    parsed = parser.parse_args(args)
    assert parsed.handler(parsed) == 0
    report = json.loads(out.read_text())
    assert report["sampler"] == "ddgan" and report["num_samples"] == 6 and report["seeds"] == [0, 5]
    assert sum(report["modes"]["histogram"]) == 6
    assert report["classifier_frechet"]["num_generated"] == 6
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "classes.png") as class_grid:
        # ten rows (one per digit) of ten 32-pixel cells with 2-pixel padding
        assert class_grid.size == (10 * 34 + 2, 10 * 34 + 2)


def test_eval_rejects_bad_inputs_before_sampling(tmp_path, monkeypatch):
    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import get_preset
    from ddgan.model.sampler import random_generator
    from ddgan.training import eval_cli

    config = get_preset("mnist")
    save_model(tmp_path / "model", config, random_generator(config).state_dict())
    save_classifier(tmp_path / "clf", MnistClassifier().eval(), {"format": "ddgan-mnist-classifier"})

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the inputs were checked")

    monkeypatch.setattr(eval_cli, "generate", no_sampling)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    model, clf = ["--model", str(tmp_path / "model")], ["--classifier", str(tmp_path / "clf")]
    cases = {
        "MNIST data not found": [*model, *clf, "--data", str(tmp_path / "missing.npz")],
        "not a classifier directory": [*model, "--classifier", str(tmp_path)],
        "not a model directory": ["--model", str(tmp_path), *clf],
        "Inception weights not found": [*model, "--inception-weights", "w.pth", "--fid-ref", str(tmp_path)],
        "--fid-ref .* does not exist": [*model, "--inception-weights", "w.pth", "--fid-ref", str(tmp_path / "x")],
    }
    for message, args in cases.items():
        parsed = parser.parse_args(["eval", *args])
        with pytest.raises(SystemExit, match=f"ddgan eval: .*{message}"):
            parsed.handler(parsed)
