"""Long silent work says what it does: the DDPM trainer's final grid announces itself and counts its steps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ddgan.training.ddpm_trainer import DDPMTrainer
from tests.training._trainer_setup import (
    one_thread,  # noqa: F401 (the fixture below)
)
from tests.training.test_ddpm_trainer import tiny_config, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


class _Recorder(logging.Handler):
    def __init__(self, events: list[str]) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.getMessage())


def test_the_final_ddpm_grid_says_so_before_it_samples_and_counts_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = DDPMTrainer(tiny_config(final_sample_steps=3), tiny_dataset(), tmp_path)
    events: list[str] = []
    sample = trainer.sample_images

    def recording_sample(steps=None, progress=None):  # type: ignore[no-untyped-def]
        events.append("sampling")
        assert progress is not None  # the progress bar is fed after every denoising step

        def counted(done: int, total: int) -> None:
            events.append(f"step {done}/{total}")
            progress(done, total)

        return sample(steps, progress=counted)

    monkeypatch.setattr(trainer, "sample_images", recording_sample)
    logger = logging.getLogger("ddgan.training.ddpm_trainer")
    handler, level = _Recorder(events), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        trainer.write_final_samples(writer=None, finished=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert events[:5] == [
        "sampling the final grid: 4 images x 3 denoising steps ...",
        "sampling",
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]
    assert events[5].startswith("final grid (3 denoising steps): ")
    assert (tmp_path / "samples" / "final_3steps.png").is_file()
