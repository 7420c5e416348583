"""Two processes on gloo (as torchrun starts them): ranks stay identical, the run checkpoints and resumes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp

from ddgan.training.run_state import load_run_state


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, run: str, report: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    import torch

    torch.set_num_threads(1)
    from ddgan.training.distributed import init_distributed, shutdown_distributed
    from ddgan.training.trainer import Trainer
    from tests.training._trainer_setup import state_digest, tiny_config, tiny_dataset

    ctx = init_distributed("cpu")
    results = {}
    try:
        for phase, max_steps in (("first", 2), ("resumed", 3)):
            trainer = Trainer(tiny_config(max_steps=max_steps), tiny_dataset(), Path(run), ctx)
            resumed = trainer.resume() if phase == "resumed" else False
            trainer.fit("test", progress=False)
            results[phase] = {
                "resumed": resumed,
                "step": trainer.step,
                "G": state_digest(trainer.generator),
                "D": state_digest(trainer.discriminator),
                "EMA": state_digest(trainer.ema),
            }
    finally:
        shutdown_distributed()
    Path(report, f"rank{rank}.json").write_text(json.dumps(results))


def test_two_gloo_processes_stay_in_sync_and_resume(tmp_path: Path) -> None:
    run, report = tmp_path / "run", tmp_path / "report"
    report.mkdir()
    mp.start_processes(
        _worker, args=(2, _free_port(), str(run), str(report)), nprocs=2, join=True, start_method="spawn"
    )
    rank0, rank1 = (json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1  # same weights on both ranks after every phase (each rank saw different data)
    assert rank0["first"]["step"] == 2 and rank0["resumed"]["step"] == 3 and rank0["resumed"]["resumed"]
    assert rank0["first"]["G"] != rank0["resumed"]["G"]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest == {"step": 3, "path": "step_00000003"}
    step, state = load_run_state(run / "checkpoints" / "step_00000003")
    assert step == 3 and state["world_size"] == 2
