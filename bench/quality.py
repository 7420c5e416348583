"""`ddgan bench quality`: sample quality against latency per image, DDPM at many step counts vs DDGAN.

Every configuration (a DDPM model at each `--ddpm-steps`, each DDGAN model at its own T) samples the same seeds,
and is scored with the project's MNIST classifier (`training.mode_coverage`, as `ddgan eval` does): classifier
Fréchet distance to the real test set, modes covered and KL of the class histogram to uniform. Latency is the wall
time of sampling those images in batches of `--batch-size`, divided by their number (CPU time beside it: on a
shared machine the wall figure includes waiting for the cores). Results are written to `--out` after every
configuration, and a rerun with the same file skips the configurations already there, so a long sweep can be cut
and resumed. `--plot` draws quality against latency (matplotlib, the `plot` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ddgan.bench.quality_plot import pareto_front, plot_pareto
from ddgan.bench.sampler import machine_description
from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.noise import image_seeds
from ddgan.model.sampler import open_sampler
from ddgan.training.flags import positive_int, set_threads

logger = logging.getLogger(__name__)

DEFAULT_DDPM_STEPS = "10,25,50,100,250,1000"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "quality",
        help="quality (classifier FD, modes, KL) vs latency per image: DDPM at many steps vs DDGAN",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ddpm", default="models/mnist-ddpm", help="DDPM baseline directory ('' for none)")
    parser.add_argument("--ddpm-steps", default=DEFAULT_DDPM_STEPS, help="comma-separated DDPM step counts")
    parser.add_argument(
        "--ddgan", action="append", help="DDGAN model directory, sampled at its T (repeatable; default models/mnist)"
    )
    parser.add_argument("--classifier", default="models/mnist-classifier", help="MNIST classifier directory")
    parser.add_argument("--data", required=True, help="Keras-layout mnist.npz: the real reference")
    parser.add_argument("--n", type=positive_int, default=200, help="samples per configuration")
    parser.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i in every config")
    parser.add_argument("--batch-size", type=positive_int, default=50)
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default torch's)")
    parser.add_argument("--out", required=True, help="JSON results (rewritten after each configuration)")
    parser.add_argument("--resume", action="store_true", help="keep the configurations already in --out")
    parser.add_argument("--plot", help="Pareto plot PNG here (needs matplotlib; skipped with a warning without it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw --plot from --out")
    parser.add_argument(
        "--latency",
        choices=["cpu", "wall"],
        default="cpu",
        help="latency axis of the plot and front: CPU ms per image (one thread: an idle machine's wall time; "
        "default) or wall ms per image (includes waiting for the cores on a loaded machine)",
    )
    parser.set_defaults(handler=run)


def configurations(ddpm: str, ddpm_steps: list[int], ddgans: list[str]) -> list[dict[str, Any]]:
    """(model, steps) to run, cheapest DDPM first so a cut sweep has the most points; steps None = the model's T."""
    runs = [{"model": ddpm, "steps": steps} for steps in sorted(ddpm_steps)] if ddpm else []
    return [{"model": model, "steps": None} for model in ddgans] + runs


def measure(sampler: Any, seeds: list[int], batch_size: int, steps: int | None) -> tuple[torch.Tensor, dict]:
    """Samples of `seeds` and their cost: wall and CPU ms per image (one warm-up image first, not counted)."""
    from ddgan.training.eval_cli import generate

    sampler.sample(seeds[:1], steps=steps)
    wall, cpu = time.perf_counter(), time.process_time()
    images = generate(sampler, seeds, batch_size, steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images, {
        "wall_ms_per_image": 1e3 * wall / len(seeds),
        "cpu_ms_per_image": 1e3 * cpu / len(seeds),
        "wall_seconds": round(wall, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


def score(classifier: Any, images: torch.Tensor, real: tuple, seed: int) -> dict[str, Any]:
    """Classifier metrics of samples, as `ddgan eval` reports them."""
    from ddgan.training.mode_coverage import (  # the train extra (scipy): imported when the benchmark runs
        classifier_frechet,
        classify_samples,
        mode_report,
        perfect_sampler_kl,
        stacked_mode_report,
    )

    probabilities, features = classify_samples(classifier, images)
    modes = stacked_mode_report(probabilities) if images.shape[1] == 3 else mode_report(probabilities)
    x_train, _, x_test, _ = real
    frechet = classifier_frechet(classifier, features, x_train, x_test, images.shape[1], seed)
    return {
        "classifier_fd": frechet.generated_vs_test,
        "real_vs_real_fd": frechet.real_train_vs_test,
        "modes_covered": modes.modes_covered,
        "num_modes": modes.num_modes,
        "kl_to_uniform": modes.kl_to_uniform,
        "perfect_sampler_kl": perfect_sampler_kl(len(images), modes.num_modes),
        "mean_confidence": modes.mean_confidence,
        "histogram": modes.histogram,
    }


def run_config(config: dict, args: argparse.Namespace, classifier: Any, real: tuple) -> dict[str, Any]:
    sampler = open_sampler(config["model"])
    info = sampler.info
    steps = info.check_steps(config["steps"])
    seeds = image_seeds(args.seed, args.n)
    images, cost = measure(sampler, seeds, args.batch_size, steps)
    return {
        "model": config["model"],
        "kind": info.kind,
        "steps": steps,
        "n": args.n,
        "seeds": [seeds[0], seeds[-1]],
        "batch_size": args.batch_size,
        **cost,
        **score(classifier, images, real, args.seed),
    }


def _environment() -> dict[str, Any]:
    return {
        "command": shlex.join(["ddgan", *sys.argv[1:]]),
        "machine": machine_description(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _key(row: dict) -> tuple[str, int | None]:
    return row["model"], row["requested_steps"]


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.plot_only:
        if not args.plot:
            raise SystemExit("ddgan bench quality: --plot-only needs --plot")
        _draw(json.loads(out.read_text())["results"], args.plot, args.latency)
        return 0
    set_threads(args.threads)
    steps = [int(s) for s in args.ddpm_steps.split(",") if s.strip()]
    todo = configurations(args.ddpm, steps, args.ddgan or ["models/mnist"])
    report: dict[str, Any] = {"environment": _environment(), "results": []}
    if args.resume and out.is_file():
        report["results"] = json.loads(out.read_text())["results"]
    done = {_key(row) for row in report["results"] if row["n"] == args.n and row["seeds"][0] == args.seed}
    from ddgan.training.classifier import load_classifier, load_mnist_npz

    classifier, _ = load_classifier(args.classifier)
    real = load_mnist_npz(args.data)
    for config in todo:
        if (config["model"], config["steps"]) in done:
            logger.info("%s at %s steps: already in %s", config["model"], config["steps"], out)
            continue
        row = {**run_config(config, args, classifier, real), "requested_steps": config["steps"]}
        report["results"].append(row)
        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
        sys.stdout.write(
            f"{row['kind']:5s} {row['steps']:5d} steps  {row['wall_ms_per_image']:9.1f} ms/image wall "
            f"({row['cpu_ms_per_image']:9.1f} CPU)  FD {row['classifier_fd']:7.2f}  "
            f"modes {row['modes_covered']}/{row['num_modes']}  KL {row['kl_to_uniform']:.4f}\n"
        )
        sys.stdout.flush()
    front = pareto_front(report["results"], args.latency)
    points = ", ".join(f"{r['kind']}@{r['steps']}" for r in front)
    sys.stdout.write(f"Pareto front ({args.latency} latency, FD): {points}\n")
    if args.plot:
        _draw(report["results"], args.plot, args.latency)
    return 0


def _draw(results: list[dict], path: str, latency: str) -> None:
    try:
        plot_pareto(results, path, latency)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -e '.[plot]'): no plot written to %s", path)
