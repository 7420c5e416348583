"""CLI of the evaluation area: `ddgan eval`, `ddgan train-classifier`, `ddgan toy` (registered by training.cli).

The parsers import no torch; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ddgan.training.flags import add_common_flags, positive_int, set_threads

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("ddgan.eval")


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_eval(subparsers)
    _add_train_classifier(subparsers)
    _add_toy(subparsers)


# ---------------------------------------------------------------- ddgan eval


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model: MNIST-classifier modes / FD (offline), FID / IS / precision-recall (Inception)",
        description="Sample a DDGAN or DDPM model directory with explicit seeds and score the samples, or score "
        "sample folders written by earlier runs (--samples).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        help="model directory (DDGAN: config.json + generator.safetensors; DDPM: diffusers unet/ + scheduler/)",
    )
    source.add_argument(
        "--samples",
        nargs="+",
        metavar="DIR",
        help="score the samples of these folders / .npz archives (--save-samples shards) instead of sampling",
    )
    p.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help="samples to score (default 10000; 26000 for 3-channel; --samples: all, or the n lowest seeds)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=None, help="DDPM inference steps (default: the model's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--classifier", help="MNIST classifier directory (ddgan train-classifier)")
    p.add_argument("--data", help="Keras-layout mnist.npz: real reference for the classifier Fréchet distance")
    p.add_argument("--inception-weights", help="FID InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--fid-ref", help="FID reference: image folder, Keras .npz, or statistics .npz (mu/sigma)")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--grid", help="write a PNG grid of the first 100 samples here")
    p.add_argument(
        "--class-grid",
        help="with --classifier on MNIST: a PNG grid with one row per digit the classifier assigns (first 10 each)",
    )
    p.add_argument(
        "--save-samples",
        help="write every sample into this folder (PNGs) or .npz archive, with a manifest of model, steps and seeds",
    )
    add_common_flags(p)
    p.set_defaults(handler=run_eval)


def _load_sampler(model_dir: str, device: str):
    from ddgan.model.sampler import open_sampler

    return open_sampler(model_dir, device=device)


def generate(sampler, seeds: list[int], batch_size: int, steps: int | None, progress: bool = False) -> torch.Tensor:
    """Samples for explicit seeds, quantised to uint8 levels exactly as a PNG file stores them, in [-1, 1]."""
    import torch
    from tqdm import tqdm

    from ddgan.model.images import to_uint8, uint8_to_float

    batches = []
    with tqdm(total=len(seeds), disable=not progress, unit="image", dynamic_ncols=True) as bar:
        for i in range(0, len(seeds), batch_size):
            chunk = seeds[i : i + batch_size]
            images = sampler.sample(chunk, steps=steps)
            batches.append(uint8_to_float(to_uint8(images), channels_last=True))
            bar.update(len(chunk))
    return torch.cat(batches)


def _write_grid(images: torch.Tensor, grid: str) -> None:
    from ddgan.model.checkpoint import atomic_write_bytes
    from ddgan.model.images import encode_png, make_grid, to_uint8

    atomic_write_bytes(Path(grid), encode_png(make_grid(to_uint8(images[:100]), columns=10), compress_level=6))


def _save_samples(images: torch.Tensor, seeds: list[int], target: str, model: str, identity: dict) -> None:
    """A `.npz` archive, or a folder of PNGs whose manifest is written last (a cut run leaves no manifest)."""
    from ddgan.model.checkpoint import atomic_write_bytes
    from ddgan.model.images import encode_png, to_uint8
    from ddgan.training.sample_folders import manifest, sample_file_name, write_archive, write_manifest

    pixels, body = to_uint8(images), manifest(identity, model, seeds)
    if target.endswith(".npz"):
        write_archive(Path(target), pixels, seeds, body)
        return
    for seed, image in zip(seeds, pixels, strict=True):
        atomic_write_bytes(Path(target) / sample_file_name(seed), encode_png(image))
    write_manifest(Path(target), body)


def run_eval(args: argparse.Namespace) -> int:
    from ddgan.model.checkpoint import CheckpointError
    from ddgan.model.config import ConfigError
    from ddgan.model.sampler import SamplerError
    from ddgan.training.classifier import ClassifierError
    from ddgan.training.inception import InceptionWeightsError
    from ddgan.training.sample_folders import SampleFolderError

    try:
        return _run_eval(args)
    except (
        CheckpointError, ConfigError, SamplerError, ClassifierError, InceptionWeightsError, FileNotFoundError,
        SampleFolderError,
    ) as exc:  # fmt: skip
        raise SystemExit(f"ddgan eval: {exc}") from exc


def _run_eval(args: argparse.Namespace) -> int:
    from ddgan.model.checkpoint import atomic_write_bytes

    if args.samples and (args.save_samples or args.steps is not None):
        raise SystemExit("ddgan eval: --samples scores existing images; --save-samples and --steps need --model")
    if not (args.classifier or args.inception_weights):
        raise SystemExit("ddgan eval: give --classifier (offline MNIST metrics) and/or --inception-weights + --fid-ref")
    if args.inception_weights and not args.fid_ref:
        raise SystemExit("ddgan eval: --inception-weights needs --fid-ref (reference images or statistics)")
    if args.fid_ref and not Path(args.fid_ref).exists():
        raise FileNotFoundError(f"--fid-ref {args.fid_ref} does not exist")
    set_threads(args.threads)
    # load everything that can fail before the (long) sampling
    classifier, real_mnist = None, None
    if args.classifier:
        from ddgan.training.classifier import load_classifier, load_mnist_npz

        classifier, classifier_meta = load_classifier(args.classifier, args.device)
        if args.data:
            real_mnist = load_mnist_npz(args.data)
    inception = None
    if args.inception_weights:
        from ddgan.training.inception import load_inception

        inception = load_inception(args.inception_weights, args.device)
    images, seeds, report = _read_samples(args) if args.samples else _sample_model(args)
    if args.grid:
        _write_grid(images, args.grid)
    text: list[str] = []
    if classifier is not None:
        report["classifier"] = {"path": str(args.classifier), "test_accuracy": classifier_meta.get("test_accuracy")}
        report.update(_offline_metrics(classifier, images, real_mnist, seeds[0], text, args.class_grid))
    if inception is not None:
        from ddgan.training.evaluation import inception_metrics

        report["inception"] = inception_metrics(inception, images, args.fid_ref, batch_size=min(args.batch_size, 100))
        text.append("FID {fid:.3f}  IS {inception_score:.3f} ± {inception_score_std:.3f}".format(**report["inception"]))
        if "precision" in report["inception"]:
            text.append("precision {precision:.3f}  recall {recall:.3f}".format(**report["inception"]))
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps(report, indent=2) + "\n").encode())
    source = args.model or ", ".join(args.samples)
    sampler = f"{report['sampler']}, {report['steps']} steps" if report["sampler"] else "unknown sampler"
    sys.stdout.write(f"{source} ({sampler}, {len(seeds)} samples, seeds {seeds[0]}..{seeds[-1]})\n")
    sys.stdout.write("\n".join(text) + "\n")
    return 0


def _sample_model(args: argparse.Namespace) -> tuple[torch.Tensor, list[int], dict]:
    from ddgan.model.noise import image_seeds
    from ddgan.training.mode_coverage import DEFAULT_SAMPLES

    sampler = _load_sampler(args.model, args.device)
    info = sampler.info
    steps = info.check_steps(args.steps)
    n = args.n or DEFAULT_SAMPLES[info.image_shape[0]]
    seeds = image_seeds(args.seed, n)
    start = time.time()
    images = generate(sampler, seeds, args.batch_size, steps, progress=not args.no_progress)
    report: dict = {
        "model": str(args.model),
        "sampler": info.kind,
        "steps": steps,
        "num_samples": n,
        "seeds": [seeds[0], seeds[-1]],
        "sampling_seconds": round(time.time() - start, 1),
    }
    if args.save_samples:
        from ddgan.training.sample_folders import sampler_identity

        _save_samples(images, seeds, args.save_samples, str(args.model), sampler_identity(info, steps))
    return images, seeds, report


def _read_samples(args: argparse.Namespace) -> tuple[torch.Tensor, list[int], dict]:
    from ddgan.training.sample_folders import read_sample_folders

    found = read_sample_folders(args.samples, limit=args.n)
    identity = found.identity or {}
    report: dict = {
        "samples": list(args.samples),
        "model": found.models[0] if len(found.models) == 1 else found.models or None,
        "sampler": identity.get("sampler"),
        "steps": identity.get("steps"),
        "num_samples": len(found.seeds),
        "seeds": [found.seeds[0], found.seeds[-1]],
        "seeds_contiguous": found.seeds[-1] - found.seeds[0] + 1 == len(found.seeds),
        "provenance": found.identity,
    }
    return found.images, found.seeds, report


def _offline_metrics(
    classifier, images: torch.Tensor, real_mnist: tuple | None, seed: int, text: list[str], class_grid: str | None
) -> dict:
    from ddgan.training.mode_coverage import (
        classifier_frechet,
        classify_samples,
        format_report,
        mode_report,
        perfect_sampler_kl,
        samples_by_class,
        stacked_mode_report,
    )

    channels = images.shape[1]
    probabilities, features = classify_samples(classifier, images)
    modes = stacked_mode_report(probabilities) if channels == 3 else mode_report(probabilities)
    result: dict = {"modes": modes.to_dict(), "perfect_sampler_kl": perfect_sampler_kl(len(images), modes.num_modes)}
    frechet = None
    if real_mnist is not None:
        x_train, _, x_test, _ = real_mnist
        frechet = classifier_frechet(classifier, features, x_train, x_test, channels, seed)
        result["classifier_frechet"] = frechet.to_dict()
    else:
        logger.warning("no --data: the classifier Fréchet distance needs the real MNIST .npz; skipped")
    text.append(format_report(modes, frechet))
    if class_grid:
        if channels != 1:
            logger.warning("--class-grid is for 1-channel MNIST samples; skipped")
        else:
            _write_class_grid(images, samples_by_class(probabilities, per_class=10), class_grid)
    return result


def _write_class_grid(images: torch.Tensor, table, path: str) -> None:
    import torch

    from ddgan.model.checkpoint import atomic_write_bytes
    from ddgan.model.images import encode_png, make_grid, to_uint8

    indices = table.reshape(-1)
    cells = to_uint8(images[torch.from_numpy(indices.clip(min=0))])  # only the grid's cells, not every sample
    cells[indices < 0] = 0  # a class with fewer samples than columns: blank cells
    atomic_write_bytes(Path(path), encode_png(make_grid(cells, columns=table.shape[1]), compress_level=6))


# ---------------------------------------------------------------- ddgan train-classifier


def _add_train_classifier(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-classifier", help="train the MNIST classifier used by `ddgan eval`")
    p.add_argument("--data", required=True, help="Keras-layout mnist.npz")
    p.add_argument("--out", required=True, help="output directory (classifier.safetensors + classifier.json)")
    p.add_argument("--epochs", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=0)
    add_common_flags(p)
    p.set_defaults(handler=run_train_classifier)


def run_train_classifier(args: argparse.Namespace) -> int:
    from ddgan.training.classifier import ClassifierError, ClassifierTrainConfig, save_classifier, train_classifier

    set_threads(args.threads)
    try:
        config = ClassifierTrainConfig(epochs=args.epochs, seed=args.seed)
        model, metadata = train_classifier(args.data, config, progress=not args.no_progress)
    except ClassifierError as exc:
        raise SystemExit(f"ddgan train-classifier: {exc}") from exc
    save_classifier(args.out, model, metadata)
    sys.stdout.write(f"test accuracy {metadata['test_accuracy']:.4f}; saved to {args.out}\n")
    return 0


# ---------------------------------------------------------------- ddgan toy


def _add_toy(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("toy", help="2-D 25-Gaussian study: GAN vs DDGAN vs SIDDM (PacGAN metrics)")
    p.add_argument("--objective", choices=["gan", "ddgan", "siddm"], default="ddgan")
    p.add_argument(
        "--num-timesteps",
        "--steps",
        type=positive_int,
        dest="num_timesteps",
        help="denoising steps T (default 4; gan: 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-steps",
        "--iterations",
        type=positive_int,
        dest="iterations",
        metavar="STEPS",
        help="training steps (default 20000)",
    )
    p.add_argument("--batch-size", type=positive_int, help="points per step (default 256)")
    p.add_argument("--hidden", type=positive_int, help="MLP width (default 128)")
    p.add_argument("--lambda-afd", type=float, help="SIDDM's AFD weight (default 1)")
    p.add_argument("--sweep", action="store_true", help="run the whole study (GAN T=1; DDGAN/SIDDM T=1,2,4,8,16)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per configuration in --sweep")
    p.add_argument("--only", nargs="+", choices=["gan", "ddgan", "siddm"], help="--sweep: only these objectives")
    p.add_argument("--sweep-steps", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="--sweep: only these T")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of sweep result files")
    p.add_argument("--out", help="JSON file: one run's metrics, or the sweep's runs (appended, resumable)")
    add_common_flags(p, threads_default=1)
    p.set_defaults(handler=run_toy)


def run_toy(args: argparse.Namespace) -> int:
    from ddgan.model.checkpoint import atomic_write_bytes
    from ddgan.model.config import ConfigError
    from ddgan.training.toy import ToyConfig, format_table, run_sweep, train_toy

    if args.table:
        runs = [run for path in args.table for run in json.loads(Path(path).read_text())]
        sys.stdout.write(format_table(runs) + "\n")
        return 0
    set_threads(args.threads)
    given = {"iterations": args.iterations, "batch_size": args.batch_size, "hidden": args.hidden}
    common = {k: v for k, v in {**given, "lambda_afd": args.lambda_afd}.items() if v is not None}
    progress = not args.no_progress
    if args.sweep:
        if not args.out:
            raise SystemExit("ddgan toy --sweep needs --out results.json")
        objectives = args.only or ["gan", "ddgan", "siddm"]
        runs = run_sweep(
            Path(args.out),
            seeds=range(args.seeds),
            objectives=objectives,
            steps_list=args.sweep_steps,
            progress=progress,
            **common,
        )
        sys.stdout.write(format_table(runs) + "\n")
        return 0
    steps = args.num_timesteps or (1 if args.objective == "gan" else 4)
    try:
        config = ToyConfig(objective=args.objective, num_timesteps=steps, seed=args.seed, **common)
    except ConfigError as exc:
        raise SystemExit(f"ddgan toy: {exc}") from exc
    start = time.process_time()
    _, metrics, _ = train_toy(config, progress=progress)
    result = {"config": config.to_dict(), **metrics.to_dict(), "cpu_seconds": round(time.process_time() - start, 1)}
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps(result, indent=2) + "\n").encode())
    sys.stdout.write(
        f"{args.objective} T={steps} seed={args.seed}: modes {metrics.modes_covered}/25, "
        f"high-quality {100 * metrics.high_quality:.1f}%, reverse KL {metrics.reverse_kl:.3f}, "
        f"FD-2D {metrics.frechet_2d:.3f} ({result['cpu_seconds']} s CPU)\n"
    )
    return 0
