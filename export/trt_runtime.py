"""TensorRT as a chain runner: `run_chain(x_T, z, noise) -> x_0` over a `chain.plan`, on torch CUDA tensors.

Inputs and output are torch tensors on the engine's GPU whose device pointers are handed to the execution
context, and the engine is enqueued on torch's current stream: no host copies and no extra synchronisation.
Batches above the profile's maximum run in chunks; batches below its minimum are zero-padded (images are
independent of one another, so padding changes nothing).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from torch import Tensor

from ddgan.export.artifacts import INPUT_NAMES, OUTPUT_NAME, ArtifactError, EngineMetadata
from ddgan.export.trt_build import current_gpu, import_tensorrt

logger = logging.getLogger(__name__)


class EngineMismatchError(ArtifactError):
    """The engine was built for another GPU or TensorRT version (engines are not portable)."""


def check_engine_target(metadata: EngineMetadata, plan: Path, device_index: int, trt_version: str, hint: str) -> None:
    """Refuse, with the reason, an engine built for a different GPU model/compute capability or TensorRT."""
    gpu = current_gpu(device_index)
    built = (metadata.gpu_name, metadata.compute_capability, metadata.tensorrt_version)
    here = (gpu.name, gpu.compute_capability, trt_version)
    if built != here:
        raise EngineMismatchError(
            f"{plan} was built for {built[0]} (compute capability {built[1]}) with TensorRT {built[2]}, but this is "
            f"{here[0]} (compute capability {here[1]}) with TensorRT {here[2]}; rebuild it here with: {hint}"
        )


class TensorRTChain:
    """Runs a deserialised chain engine with one execution context (calls are serialised by a lock)."""

    def __init__(self, plan: str | Path, metadata: EngineMetadata, device: str | torch.device, hint: str) -> None:
        trt = import_tensorrt()
        self.plan = Path(plan)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ArtifactError(f"the tensorrt backend runs on a CUDA device, not {self.device}")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        check_engine_target(metadata, self.plan, index, str(trt.__version__), hint)
        self.metadata = metadata
        self.min_batch = metadata.profile["min_batch"]
        self.max_batch = metadata.profile["max_batch"]
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._trt_logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
            if self.engine is None:
                raise EngineMismatchError(f"TensorRT could not deserialise {self.plan}; rebuild it with: {hint}")
            self.context = self.engine.create_execution_context()
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self.dtypes = {name: to_torch[self.engine.get_tensor_dtype(name)] for name in (*INPUT_NAMES, OUTPUT_NAME)}
        self._lock = threading.Lock()
        logger.info("TensorRT engine %s on %s (batch %d..%d)", self.plan, self.device, self.min_batch, self.max_batch)

    def __call__(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        batch = x_T.shape[0]
        if batch > self.max_batch:
            parts = [
                self._run(x_T[i : i + self.max_batch], z[:, i : i + self.max_batch], noise[:, i : i + self.max_batch])
                for i in range(0, batch, self.max_batch)
            ]
            return torch.cat(parts)
        if batch < self.min_batch:
            pad = self.min_batch - batch
            x_T = torch.cat([x_T, x_T.new_zeros((pad, *x_T.shape[1:]))])
            z = torch.cat([z, z.new_zeros((z.shape[0], pad, *z.shape[2:]))], dim=1)
            noise = torch.cat([noise, noise.new_zeros((noise.shape[0], pad, *noise.shape[2:]))], dim=1)
            return self._run(x_T, z, noise)[:batch]
        return self._run(x_T, z, noise)

    def _run(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        with self._lock, torch.cuda.device(self.device):
            inputs = {
                name: tensor.to(self.device, self.dtypes[name]).contiguous()
                for name, tensor in zip(INPUT_NAMES, (x_T, z, noise), strict=True)
            }
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            x_0 = torch.empty(tuple(x_T.shape), dtype=self.dtypes[OUTPUT_NAME], device=self.device)
            self.context.set_tensor_address(OUTPUT_NAME, x_0.data_ptr())
            if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise RuntimeError(f"TensorRT failed to enqueue {self.plan}")
        return x_0.float()
