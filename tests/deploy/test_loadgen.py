"""docker/loadgen.py's options and statistics (its real run against a server is in test_live_stack.py)."""

from __future__ import annotations

import pytest

from tests.deploy import live

loadgen = live.load_loadgen()


def test_summary_quantiles_and_outcomes() -> None:
    stats = loadgen.StreamStats(sent=102, skipped=3)
    stats.statuses.update({"200": 100, "503": 2})
    stats.latencies_s.extend(float(i) for i in range(100, 0, -1))  # 1 .. 100 s, unordered
    summary = stats.summary()
    assert summary["ok"] == 100 and summary["sent"] == 102 and summary["skipped"] == 3
    # Inclusive quantiles of 1..100: q = 1 + 99 * p.
    assert summary["p50_s"] == pytest.approx(50.5)
    assert summary["p95_s"] == pytest.approx(95.05)
    assert summary["p99_s"] == pytest.approx(99.01)
    assert summary["statuses"] == {"200": 100, "503": 2}


def test_single_latency_is_every_quantile() -> None:
    stats = loadgen.StreamStats(sent=1)
    stats.statuses["200"] += 1
    stats.latencies_s.append(0.25)
    quantiles = {k: v for k, v in stats.summary().items() if k.endswith("_s")}
    assert quantiles == {"p50_s": 0.25, "p95_s": 0.25, "p99_s": 0.25}


def test_options_come_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADGEN_DDPM_RPS", "0.25")
    monkeypatch.setenv("LOADGEN_DATASET", "celebahq")
    monkeypatch.setenv("DDGAN_API_KEY", "secret")
    args = loadgen.parse_args(["--ddgan-rps", "8", "--ddpm-steps", "100"])
    assert (args.dataset, args.ddgan_rps, args.ddpm_rps, args.ddpm_steps) == ("celebahq", 8.0, 0.25, 100)
    assert args.api_key == "secret"


@pytest.mark.parametrize(
    "argv", [["--ddgan-rps", "0", "--ddpm-rps", "0"], ["--ddgan-rps", "-1"], ["--n", "0"], ["--max-in-flight", "0"]]
)
def test_bad_options_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        loadgen.parse_args(argv)
    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err
