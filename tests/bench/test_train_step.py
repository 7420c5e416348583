"""`ddgan bench train-step`: the loss-curve table averages each window of steps, per precision."""

from __future__ import annotations

from ddgan.bench.train_step import loss_curve_table


def test_loss_curve_windows_cover_every_step_once_with_their_means() -> None:
    losses = {
        "fp32": [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0), (9.0, 10.0)],
        "bf16": [(0.0, 0.0), (0.0, 2.0), (1.0, 1.0), (1.0, 3.0), (2.0, 2.0)],
    }
    rows = loss_curve_table(losses, first_step=2, windows=2).splitlines()
    assert rows[0] == "| steps | fp32 loss_d / loss_g | bf16 loss_d / loss_g |"
    # 5 steps in 2 windows: steps 3-4 and 5-7 (numbered after the 2 untimed warm-up steps)
    assert rows[2] == "| 3–4 | 2.000 / 3.000 | 0.000 / 1.000 |"
    assert rows[3] == "| 5–7 | 7.000 / 8.000 | 1.333 / 2.000 |"
    assert len(rows) == 4
