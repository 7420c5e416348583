"""`ddgan generate --url http://host:8000 --dataset mnist -n 16 --seed 7 -o out/`: images from a running server.

Synchronous `/generate` by default for DDGAN; as an async job (with a progress bar of the denoising steps) for
DDPM or with `--job`. Writes one PNG per seed, `<dataset>-<sampler>-seed<seed>.png`. Imports no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddgan.client import Client, Generation

EXIT_FAILED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images on a running server (--url); async jobs show a progress bar",
        description="Ask a running ddgan server for images and write them as PNG files. DDGAN requests use "
        "POST /generate; DDPM requests (or --job) run as async jobs with a progress bar.",
    )
    parser.add_argument(
        "--url", default=os.environ.get("DDGAN_URL", "http://127.0.0.1:8000"), help="server (env DDGAN_URL)"
    )
    parser.add_argument("--dataset", required=True, help="a dataset the server lists in GET /v1/models")
    parser.add_argument("-n", type=int, default=1, help="number of images (default 1)")
    parser.add_argument("--seed", type=int, help="image i uses seed + i (default: the server picks one)")
    parser.add_argument("--sampler", choices=("ddgan", "ddpm"), default="ddgan")
    parser.add_argument("--steps", type=int, help="DDPM denoising steps")
    parser.add_argument("-o", "--out", type=Path, default=Path("."), help="directory of the PNGs (default .)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--job", dest="job", action="store_const", const=True, help="run as an async job")
    mode.add_argument("--sync", dest="job", action="store_const", const=False, help="always POST /generate")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="give up after this long (default 3600)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddgan.client import Client, ClientError, NotFoundError

    use_job = args.sampler == "ddpm" if args.job is None else args.job
    request: dict[str, Any] = {"n": args.n, "seed": args.seed, "sampler": args.sampler, "steps": args.steps}
    try:
        with Client(args.url, api_key=os.environ.get("DDGAN_API_KEY"), timeout_s=args.timeout_s) as client:
            if use_job:
                try:
                    generation = _run_job(client, args, request)
                except NotFoundError as exc:
                    if exc.type != "not_found" or args.job:
                        raise
                    # A server without the jobs API: fall back to one synchronous request.
                    generation = client.generate(args.dataset, **request)
            else:
                generation = client.generate(args.dataset, **request)
    except ClientError as exc:
        sys.stderr.write(f"ddgan generate: {exc}\n")
        return EXIT_FAILED
    paths = generation.save(args.out)
    latency = generation.latency
    sys.stdout.write(
        f"{len(paths)} images ({generation.dataset}/{generation.sampler}, {generation.steps} steps, seeds "
        f"{generation.seeds[0]}..{generation.seeds[-1]}) in {args.out}: queue {latency.queue:.0f} ms, "
        f"inference {latency.inference:.0f} ms, cached {generation.cached}\n"
    )
    return 0


def _run_job(client: Client, args: argparse.Namespace, request: dict[str, Any]) -> Generation:
    from tqdm import tqdm

    from ddgan.client import Job

    job = client.jobs.submit(args.dataset, **request)
    with tqdm(
        total=max(1, job.progress.steps_total), unit="step", desc=f"job {job.id[:8]}", disable=args.no_progress
    ) as bar:

        def advance(update: Job) -> None:
            bar.total = max(1, update.progress.steps_total)
            bar.n = update.progress.steps_done
            bar.set_postfix_str(f"{update.state}, {update.progress.images_done}/{update.progress.images_total} images")
            bar.refresh()

        client.jobs.wait(job, progress=advance, timeout_s=args.timeout_s)
    return client.jobs.result(job.id)
