"""Sample-quality metrics: Fréchet distance, Inception Score, improved precision/recall, KL to uniform.

FID and IS are computed by torchmetrics (a maintained metrics library) on features we extract once with our
InceptionV3 (`training.inception`; torchmetrics' own extractor needs torch-fidelity/torchvision, which would
replace the CPU torch). Our `frechet_distance` serves what torchmetrics cannot take: precomputed reference
statistics and the MNIST classifier's features (`training.mode_coverage`); a test holds it equal to torchmetrics'.
torchmetrics has no improved precision/recall, so `precision_recall` is ours, checked against closed forms.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from ddgan.model.images import uint8_to_float
from ddgan.training.datasets import IMAGE_SUFFIXES, image_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian fit (mean, covariance) of a feature set, as FID uses it."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))

    def save(self, path: str) -> None:
        np.savez(path, mean=self.mean, cov=self.cov, count=self.count)

    @classmethod
    def load(cls, path: str) -> FeatureStats:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["mean"], data["cov"], int(data["count"]))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}) (Dowson & Landau 1982; Heusel et al. 2017, Eq. 6)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: {mu1.shape} {sigma1.shape} vs {mu2.shape} {sigma2.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(sigma1 @ sigma2)
            singular = not np.isfinite(covmean).all()
        except linalg.LinAlgWarning:
            singular = True
    if singular:
        # singular product (e.g. fewer samples than dimensions): regularise both covariances slightly
        logger.debug("Fréchet distance: singular covariance product; adding 1e-6 to the diagonals")
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def kl_to_uniform(counts: np.ndarray) -> float:
    """KL(p̂ ‖ U_K) = Σ p̂ log(K p̂) of a histogram with K bins (empty bins contribute 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("empty histogram")
    p_hat = counts[counts > 0] / counts.sum()
    return float(np.sum(p_hat * np.log(p_hat * len(counts))))


def frechet_distance_of(features_a: np.ndarray, features_b: np.ndarray) -> float:
    a, b = FeatureStats.of(features_a), FeatureStats.of(features_b)
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


class PrecomputedFeatures(torch.nn.Module):
    """Identity "feature extractor" for torchmetrics: update() receives features already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_of_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """FID (Heusel et al. 2017, Eq. 6) of two feature sets through torchmetrics' FrechetInceptionDistance."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real_t, fake_t = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    if real_t.ndim != 2 or fake_t.shape[1:] != real_t.shape[1:] or min(len(real_t), len(fake_t)) < 2:
        shapes = f"{tuple(real_t.shape)} and {tuple(fake_t.shape)}"
        raise ValueError(f"need (N >= 2, D) features for both sets, got {shapes}")
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real_t.shape[1]))
    metric.update(real_t, real=True)
    metric.update(fake_t, real=False)
    return float(metric.compute())


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))) per split (Salimans et al. 2016) via torchmetrics; (mean, std) over splits.

    torchmetrics shuffles the samples before splitting; `seed` makes that shuffle, and so the score, repeatable.
    """
    from torchmetrics.image.inception import InceptionScore

    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    if logits_t.ndim != 2 or len(logits_t) < splits:
        raise ValueError(f"need (N >= splits, classes) logits, got {tuple(logits_t.shape)}")
    if not torch.isfinite(logits_t).all():
        raise ValueError("logits must be finite (pass the classifier's logits, not probabilities with zeros)")
    metric = InceptionScore(feature=PrecomputedFeatures(logits_t.shape[1]), splits=splits)
    metric.update(logits_t)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = np.sum(a * a, axis=1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, axis=1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


def _knn_radii(features: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = [
        np.partition(_pairwise_distances(features[i : i + chunk], features), k, axis=1)[:, k]  # [:, 0] is itself
        for i in range(0, len(features), chunk)
    ]
    return np.concatenate(radii)


def _share_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> float:
    """Share of `points` inside at least one ball (centres[j], radii[j])."""
    inside = [
        np.any(_pairwise_distances(points[i : i + chunk], centres) <= radii[None, :], axis=1)
        for i in range(0, len(points), chunk)
    ]
    return float(np.mean(np.concatenate(inside)))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls around each set's points.

    precision = share of fake points inside some real point's k-NN ball; recall = the converse.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(len(real), len(fake)) <= k:
        raise ValueError(f"need (N > k, D) features for both sets, got {real.shape} and {fake.shape}")
    precision = _share_inside(fake, real, _knn_radii(real, k))
    recall = _share_inside(real, fake, _knn_radii(fake, k))
    return precision, recall


# ---------------------------------------------------------------- FID / IS / precision-recall with InceptionV3


def load_reference_images(path: str, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Real images as (N, H, W, C) uint8 from an image folder (any PNG/JPEG tree) or a Keras-layout `.npz`.

    For a `.npz` the test split (`x_test`) is the reference, else `x_train`. `limit` draws a seeded subset.
    """
    source = Path(path)
    if source.is_dir():
        files = image_files(source)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {source}")
        if limit is not None and limit < len(files):
            picks = np.random.default_rng(seed).choice(len(files), size=limit, replace=False)
            files = [files[i] for i in sorted(picks)]
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"reference images under {source} differ in size; resize them to one size first")
        return np.stack(arrays)
    if source.suffix == ".npz" and source.is_file():
        with np.load(source, allow_pickle=False) as data:
            key = "x_test" if "x_test" in data.files else "x_train"
            if key not in data.files:
                raise ValueError(f"{source} has neither x_test nor x_train")
            images = data[key]
        if images.ndim == 3:
            images = images[..., None]
        if limit is not None and limit < len(images):
            images = images[np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))]
        return images
    raise FileNotFoundError(f"reference {source} is neither an image folder nor a .npz file")


def load_reference_stats(path: str) -> FeatureStats:
    """Precomputed statistics: our `FeatureStats.save` (.npz: mean/cov) or pytorch-fid's (.npz: mu/sigma)."""
    with np.load(path, allow_pickle=False) as data:
        if {"mu", "sigma"} <= set(data.files):
            return FeatureStats(data["mu"], data["sigma"], int(data["count"]) if "count" in data.files else 0)
        if {"mean", "cov"} <= set(data.files):
            return FeatureStats(data["mean"], data["cov"], int(data["count"]) if "count" in data.files else 0)
    raise ValueError(f"{path}: expected arrays mu/sigma or mean/cov")


def inception_metrics(
    inception: torch.nn.Module,
    generated: torch.Tensor,
    reference: str,
    batch_size: int = 100,
    pr_samples: int = 10_000,
) -> dict[str, float]:
    """FID, IS and (for image references) improved precision/recall of generated images in [-1, 1].

    `reference`: an image folder / Keras `.npz` (features computed here) or a statistics `.npz` (FID only).
    """
    from ddgan.training.inception import inception_outputs

    gen_features, gen_logits = inception_outputs(inception, generated, batch_size)  # type: ignore[arg-type]
    is_mean, is_std = inception_score(gen_logits)
    result = {"inception_score": is_mean, "inception_score_std": is_std, "num_generated": len(generated)}
    gen_np = gen_features.numpy()
    try:
        stats = load_reference_stats(reference)
    except (ValueError, OSError):
        stats = None
    if stats is not None:
        gen_stats = FeatureStats.of(gen_np)
        result["fid"] = frechet_distance(gen_stats.mean, gen_stats.cov, stats.mean, stats.cov)
        logger.info("precision/recall need reference images, not statistics: skipped")
        return result
    ref_images = load_reference_images(reference)
    ref_features = inception_outputs(inception, uint8_to_float(ref_images, channels_last=True), batch_size)[0].numpy()  # type: ignore[arg-type]
    result["fid"] = fid_of_features(ref_features, gen_np)
    n = min(pr_samples, len(gen_np), len(ref_features))
    result["precision"], result["recall"] = precision_recall(ref_features[:n], gen_np[:n])
    return result
