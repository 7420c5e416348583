"""The quality–latency picture of `ddgan bench quality`: Pareto front and a matplotlib plot (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENCY_KEYS = {"cpu": "cpu_ms_per_image", "wall": "wall_ms_per_image"}


def pareto_front(results: list[dict[str, Any]], latency: str = "cpu") -> list[dict[str, Any]]:
    """Rows no other row beats on both latency and classifier FD (lower is better on both), fastest first.

    `latency`: "cpu" (CPU ms per image; with one thread, what an idle machine's wall clock shows) or "wall".
    """
    key = LATENCY_KEYS[latency]
    ordered = sorted(results, key=lambda r: (r[key], r["classifier_fd"]))
    front: list[dict[str, Any]] = []
    for row in ordered:
        if not front or row["classifier_fd"] < front[-1]["classifier_fd"]:
            front.append(row)
    return front


def plot_pareto(results: list[dict[str, Any]], path: str | Path, latency: str = "cpu") -> Path:
    """Classifier FD and KL against ms per image (log scale); one line per model, points labelled by steps.

    Raises ImportError when matplotlib is absent.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    key = LATENCY_KEYS[latency]
    fig, (ax_fd, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.5))
    models = sorted({(r["kind"], r["model"]) for r in results})
    for kind, model in models:
        rows = sorted((r for r in results if r["model"] == model), key=lambda r: r[key])
        marker = "o-" if kind == "ddpm" else "*"
        label = f"{kind.upper()} {Path(model).name}"
        times = [r[key] for r in rows]
        for ax, metric in ((ax_fd, "classifier_fd"), (ax_kl, "kl_to_uniform")):
            values = [r[metric] for r in rows]
            ax.plot(times, values, marker, label=label, markersize=12 if kind == "ddgan" else 6)
            for row, x, y in zip(rows, times, values, strict=True):
                ax.annotate(f"{row['steps']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(results, latency)
    ax_fd.plot([r[key] for r in front], [r["classifier_fd"] for r in front], "k:", label="Pareto front")
    floor = results[0]["real_vs_real_fd"] if results else None
    if floor is not None:
        ax_fd.axhline(floor, color="grey", linewidth=0.8, linestyle="--", label=f"real vs real ({floor:.1f})")
    n = results[0]["n"] if results else 0
    ax_fd.set_ylabel("classifier Fréchet distance (lower is better)")
    ax_kl.set_ylabel("KL(class histogram ‖ uniform)")
    ax_kl.axhline(results[0]["perfect_sampler_kl"], color="grey", linewidth=0.8, linestyle="--", label="perfect")
    for ax in (ax_fd, ax_kl):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the 2×, 3× ... labels of a short log axis overlap
        ax.set_xlabel(f"{latency} ms per image (log; numbers: denoising steps)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Quality vs latency, same {n} seeds per point")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
