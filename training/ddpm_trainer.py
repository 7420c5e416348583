"""Training the DDPM baseline (Ho et al. 2020): a diffusers `UNet2DModel` that predicts ε under DDPM's linear β.

The objective is L_simple (eq. 14): t ~ U{0..T-1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), loss
‖ε - ε_θ(x_t, t)‖². Adam with a linear LR warm-up and gradient clipping as in the paper, an EMA of the weights
(with the usual (1+n)/(10+n) warm-up so short runs are usable), and a run state that resumes exactly: the
weights, EMA, Adam moments, step and the noise generator live in one safetensors file written atomically;
data order is a function of (seed, step) (`BatchStream`), so it needs no state.

The exported model is the EMA UNet in diffusers format (`model.ddpm.save_ddpm`), loadable by `load_ddpm_sampler`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ddgan.model.checkpoint import CheckpointError, atomic_write_bytes
from ddgan.model.ddpm_io import save_ddpm
from ddgan.training.data import ImageDataset

CHECKPOINT_FILE = "checkpoint.safetensors"
STATE_FORMAT = "ddgan-ddpm-train-state"
# Fields a resumed run may change: they steer the run, not what is trained.
RUN_CONTROL = ("steps", "data_source")


@dataclass
class DDPMTrainConfig:  # the defaults are the `mnist` recipe
    """Everything that defines a DDPM training run (saved into the run and its checkpoints)."""

    dataset_kind: str = "auto"
    image_size: int = 32
    channels: int = 1
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()  # indices into block_out_channels that get self-attention
    norm_num_groups: int = 8
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4  # DDPM's linear schedule, β_1 .. β_T
    beta_end: float = 0.02
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    hflip: bool = False
    seed: int = 0
    steps: int = 10000
    data_source: str = ""
    dataset_name: str = "mnist"  # what the model is of; the server's `dataset` label
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DDPMTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown DDPM training config fields: {', '.join(unknown)}")
        values = dict(data)
        for name in ("block_out_channels", "attention_levels"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def validate(self) -> None:
        levels = len(self.block_out_channels)
        if levels < 1 or self.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{levels - 1} ({levels} levels)")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must divide by {self.norm_num_groups}")
        if any(not 0 <= level < levels for level in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} must index block_out_channels")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.batch_size < 1 or self.steps < 1 or self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("batch_size and steps must be >= 1, lr > 0 and ema_decay in [0, 1)")


# Named recipes (`ddgan train-ddpm --preset NAME`); flags override single fields.
DDPM_PRESETS: dict[str, dict[str, Any]] = {
    # The bundled baseline: small enough to train in about an hour on 2 shared CPU cores (0.64 M parameters).
    "mnist": {},
    "stacked_mnist": {
        "dataset_kind": "stacked_mnist",
        "channels": 3,
        "block_out_channels": (32, 64, 64),
        "dataset_name": "stacked_mnist",
    },
    # DDPM's CIFAR-10 model and recipe (35.7 M parameters, google/ddpm-cifar10-32): attention at 16×16,
    # dropout 0.1, batch 128, lr 2e-4 with 5000 warm-up steps, EMA 0.9999, random flips, 800k steps.
    "cifar10": {
        "channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "attention_levels": (1,),
        "norm_num_groups": 32,
        "dropout": 0.1,
        "batch_size": 128,
        "lr": 2e-4,
        "warmup_steps": 5000,
        "ema_decay": 0.9999,
        "hflip": True,
        "steps": 800_000,
        "dataset_name": "cifar10",
    },
}


def preset_config(name: str, **overrides: Any) -> DDPMTrainConfig:
    """The recipe `name` with `overrides` (None values are ignored)."""
    if name not in DDPM_PRESETS:
        raise ValueError(f"unknown DDPM preset {name!r}; choose one of {', '.join(sorted(DDPM_PRESETS))}")
    values = {**DDPM_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return DDPMTrainConfig(**values)


def build_unet(config: DDPMTrainConfig) -> UNet2DModel:
    """The ε-prediction U-Net; initialised from the global torch RNG (seed it first)."""
    levels = range(len(config.block_out_channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
    )


def build_scheduler(config: DDPMTrainConfig) -> DDPMScheduler:
    """DDPM's forward process: linear β, ε-prediction, the σ_t² = β̃_t ("fixed_small") reverse variance."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule="linear",
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
    )


class DDPMTrainer:
    """Holds the U-Net, its EMA, Adam and the noise generator; `train_step` runs one L_simple update."""

    def __init__(self, config: DDPMTrainConfig, device: str | torch.device = "cpu") -> None:
        config.validate()
        self.config = config
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet = build_unet(config)
        self.unet = unet.to(self.device).train()
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.unet.parameters(), lr=config.lr)
        self.scheduler = build_scheduler(config)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        # t and ε are drawn on the CPU from this generator: the same numbers on any device, and resumable.
        self.noise_generator = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to `lr` over `warmup_steps` (DDPM used 5000 on CIFAR-10), then constant."""
        if self.config.warmup_steps <= 0:
            return self.config.lr
        return self.config.lr * min(1.0, (step + 1) / self.config.warmup_steps)

    def ema_decay(self, step: int) -> float:
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    def train_step(self, x_0: Tensor) -> dict[str, float]:
        """One optimiser step on a batch x_0 (B, C, H, W) in [-1, 1]; returns the loss and the gradient norm."""
        batch = x_0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (batch,), generator=self.noise_generator)
        epsilon = torch.randn(x_0.shape, generator=self.noise_generator)
        x_0, t, epsilon = x_0.to(self.device), t.to(self.device), epsilon.to(self.device)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x_0 + (1.0 - alpha_bar).sqrt() * epsilon  # eq. 4
        loss = torch.nn.functional.mse_loss(self.unet(x_t, t).sample, epsilon)  # L_simple, eq. 14
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DDPM loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": self.learning_rate(self.step - 1)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema ← decay·ema + (1 − decay)·θ
        decay = self.ema_decay(self.step)
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.unet.parameters()], 1.0 - decay)

    # ------------------------------------------------------------------ run state

    def state_bytes(self, extra: dict[str, Any] | None = None) -> bytes:
        """The whole run state as one safetensors blob (tensors + JSON metadata)."""
        tensors: dict[str, Tensor] = {}
        for prefix, module in (("unet", self.unet), ("ema", self.ema)):
            for name, value in module.state_dict().items():
                tensors[f"{prefix}.{name}"] = value.detach().cpu().contiguous()
        optimizer_state = self.optimizer.state_dict()
        for index, state in optimizer_state["state"].items():
            for name, value in state.items():
                tensors[f"adam.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.noise"] = self.noise_generator.get_state()
        meta = {
            "format": STATE_FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "param_groups": optimizer_state["param_groups"],
            "extra": extra or {},
        }
        return safetensors_bytes(tensors, metadata={"state": json.dumps(meta)})

    def save_checkpoint(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        atomic_write_bytes(path, self.state_bytes(extra))

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore a run state written by `save_checkpoint`; returns its `extra` dict."""
        tensors, meta = read_checkpoint(path)
        saved = DDPMTrainConfig.from_dict(meta["config"]).to_dict()
        differing = sorted(k for k, v in self.config.to_dict().items() if k not in RUN_CONTROL and saved.get(k) != v)
        if differing:
            raise CheckpointError(f"{path} was written with a different DDPM config ({', '.join(differing)})")
        for prefix, module in (("unet", self.unet), ("ema", self.ema)):
            state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(state, strict=True)
        adam_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                adam_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": adam_state, "param_groups": meta["param_groups"]})
        self.noise_generator.set_state(tensors["rng.noise"])
        self.step = int(meta["step"])
        return dict(meta.get("extra", {}))

    def export(self, directory: Path) -> Path:
        """Write the EMA U-Net as a diffusers-format model directory with our `ddpm.json`."""
        ema_cpu = copy.deepcopy(self.ema).to("cpu")
        trained_on = f"{self.config.data_source} ({self.step} steps, batch {self.config.batch_size}, EMA)"
        return save_ddpm(directory, ema_cpu, build_scheduler(self.config), self.config.dataset_name, trained_on)


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a run state file; a clear error for anything else."""
    if not path.is_file():
        raise CheckpointError(f"no DDPM training checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("state", "{}"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open API)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors training checkpoint: {exc}") from exc
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a DDPM training checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def load_config_from_checkpoint(path: Path) -> DDPMTrainConfig:
    _, meta = read_checkpoint(path)
    return DDPMTrainConfig.from_dict(meta["config"])


def stream_for(trainer: DDPMTrainer, dataset: ImageDataset, num_workers: int = 0):
    """The deterministic batch iterator that continues at the trainer's current step."""
    from ddgan.training.data import BatchStream

    stream = BatchStream(dataset, trainer.config.batch_size, seed=trainer.config.seed, num_workers=num_workers)
    return stream.batches(trainer.step)
