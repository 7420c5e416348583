"""The torch backends of the DDGAN chain: eager, CUDA-graph replay and `torch.compile`.

They need nothing but torch, so they live beside the model and are registered by the factory itself. CUDA graphs
remove the per-kernel launch cost of the T-step chain (hundreds of small kernels per step at
batch 1). A graph is captured per batch size on first use, into one shared memory pool, and replayed with the
new inputs copied into its static buffers; the least recently used graphs are dropped beyond `max_graphs`.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import time
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ddgan.model.chain import BackendSpec, CastingChain, ChainRequest, RunChain
from ddgan.model.diffusion import SamplingChain

logger = logging.getLogger(__name__)


class CudaGraphChain:
    """Replays one captured CUDA graph of `chain` per batch size (inputs copied into static buffers)."""

    def __init__(self, chain: nn.Module, device: torch.device, max_graphs: int = 8) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.chain = chain
        self.device = device
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[int, torch.dtype], tuple[Any, list[Tensor], Tensor]] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle()
        self._lock = threading.Lock()

    def __call__(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        key = (x_T.shape[0], x_T.dtype)
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = self._capture(x_T, z, noise)
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            graph, static_inputs, static_output = self._graphs[key]
            for buffer, value in zip(static_inputs, (x_T, z, noise), strict=True):
                buffer.copy_(value)
            graph.replay()
            return static_output.clone()  # the next replay overwrites the static output

    def _capture(self, x_T: Tensor, z: Tensor, noise: Tensor) -> tuple[Any, list[Tensor], Tensor]:
        static_inputs = [t.detach().to(self.device).clone() for t in (x_T, z, noise)]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: cuDNN algorithm choice, allocator growth
            for _ in range(2):
                self.chain(*static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_output = self.chain(*static_inputs)
        logger.info("captured a CUDA graph of the chain for batch %d (%s)", x_T.shape[0], x_T.dtype)
        return graph, static_inputs, static_output


class CompiledChain:
    """`torch.compile` of the chain; on CUDA the default mode `reduce-overhead` also replays CUDA graphs.

    `freezing` (inductor's option; the CPU default) folds the weights into the graph as constants and pre-packs
    them for oneDNN: frozen, the bf16 cifar10 chain ran 5.15x torch fp32 eager on an AMX Xeon, the fastest CPU
    engine measured (docs/benchmarks.md). The chain only ever runs for inference, which freezing requires.
    """

    def __init__(
        self, chain: nn.Module, device: torch.device, mode: str | None = None, freezing: bool | None = None
    ) -> None:
        self.device = device
        self.freezing = device.type == "cpu" if freezing is None else freezing
        if not isinstance(self.freezing, bool):
            raise ValueError(f"option freezing must be true or false, got {freezing!r}")
        if self.freezing and mode not in (None, "default"):
            raise ValueError(f"option freezing needs compile_mode 'default', got {mode!r}")
        self.mode = mode or ("reduce-overhead" if device.type == "cuda" and not self.freezing else "default")
        self.compiled = torch.compile(chain, mode=self.mode)
        self._seen_batches: set[int] = set()

    def __call__(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        batch = int(x_T.shape[0])
        if batch not in self._seen_batches:  # compilation is minutes of silent work: say so before and after
            self._seen_batches.add(batch)
            logger.info(
                "torch.compile (mode %s, freezing %s): compiling the chain for batch %d, may take minutes ...",
                self.mode,
                self.freezing,
                batch,
            )
            started = time.perf_counter()
            output = self._run(x_T, z, noise)
            logger.info("torch.compile: batch %d ready in %.1f s", batch, time.perf_counter() - started)
            return output
        return self._run(x_T, z, noise)

    def _run(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        # Inductor reads `freezing` from its global config when it compiles (a new batch size, on the call);
        # torch.compile(options={"freezing": True}) does not reach that check in torch 2.13, the weights stayed
        # graph inputs (docs/benchmarks.md). The patch is scoped to this chain's calls.
        with torch._inductor.config.patch(freezing=self.freezing):
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # each call is a new inference step: outputs may be reused
                return self.compiled(x_T, z, noise).clone()
            return self.compiled(x_T, z, noise)


def eager_chain(request: ChainRequest) -> CastingChain:
    """The chain as a torch module in the requested dtype on the requested device."""
    chain = SamplingChain(request.load_generator(), request.config.diffusion)
    return CastingChain(chain, request.dtype).to(device=request.device, dtype=request.dtype).eval()


def _build_eager(request: ChainRequest) -> RunChain:
    return eager_chain(request)


def _build_cuda_graphs(request: ChainRequest) -> RunChain:
    return CudaGraphChain(eager_chain(request), request.device)


def _build_compiled(request: ChainRequest) -> RunChain:
    options = request.options
    return CompiledChain(eager_chain(request), request.device, options.get("compile_mode"), options.get("freezing"))


def _needs_cuda(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None if torch.cuda.is_available() else "CUDA is not available in this process"


def _compile_unavailable(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "torch.compile on CUDA needs triton"
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++)"
    return None


TORCH_DTYPE_NAMES = ("float32", "float16", "bfloat16")
TORCH_BACKENDS = (
    BackendSpec("torch", _build_eager, "PyTorch eager (any device)", dtypes=TORCH_DTYPE_NAMES, random_weights=True),
    BackendSpec(
        "cuda-graphs",
        _build_cuda_graphs,
        "PyTorch eager replayed from one captured CUDA graph per batch size",
        dtypes=TORCH_DTYPE_NAMES,
        random_weights=True,
        unavailable=_needs_cuda,
    ),
    BackendSpec(
        "torch-compile",
        _build_compiled,
        "torch.compile (inductor); on the CPU with weights frozen, on CUDA mode reduce-overhead (CUDA graphs)",
        dtypes=TORCH_DTYPE_NAMES,
        options=("compile_mode", "freezing"),
        random_weights=True,
        unavailable=_compile_unavailable,
    ),
)
