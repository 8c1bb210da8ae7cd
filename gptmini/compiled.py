"""The decode step compiled: GPTMini.decode_graph with every shape fixed, built once per batch size.

On a CPU the step is compiled ahead of time (torch.export + AOTInductor: one C++ library, called with
no Python between its kernels and no guards to check before it), about 18 % faster a token than
torch.compile's call of the same graph (README, "Decoding speed"). The library holds the code only:
the model's own tensors are handed to it, so one library serves every checkpoint of the same shape. It
is kept on disk (`cache_dir()`): a later process loads it in well under a second instead of compiling.
On CUDA, torch.compile's CUDA graphs replay the whole step (another device: torch.compile alone).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import kernels
from .model import GPTMini, StaticCache

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, StaticCache], tuple]


def cache_dir() -> Path:
    """Where compiled steps are kept: $GPTMINI_CACHE, else $XDG_CACHE_HOME/gptmini (~/.cache/gptmini)."""
    root = os.environ.get("GPTMINI_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptmini"
    return Path(root) / "decode"


class DecodeGraph(nn.Module):
    """decode_graph over plain tensors, the form torch.export takes."""

    def __init__(self, model: GPTMini) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, positions, key_mask, k, v, index):
        return self.model.decode_graph(tokens, positions, key_mask, StaticCache(k, v, index))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every weight and buffer by the name the compiled library asks for (tied weights under both names)."""
        return {**dict(self.named_parameters(remove_duplicate=False)), **dict(self.named_buffers(remove_duplicate=False))}


def step_key(graph: DecodeGraph, inputs: tuple[torch.Tensor, ...]) -> str:
    """What the compiled code depends on, hashed: gptmini's source, torch's version, the CPU's vector
    instructions and thread count (inductor builds for them), and the shape, strides and dtype of every
    tensor it reads. Weights' values are not in it: they are handed to the library when it is loaded."""
    source = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.rglob("*.py"))))
    tensors = [(name, *_layout(t)) for name, t in graph.tensors().items()] + [_layout(t) for t in inputs]
    facts = [torch.__version__, str(torch._inductor.cpu_vec_isa.pick_vec_isa()), torch.get_num_threads(),
             source.hexdigest(), tensors]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def _layout(t: torch.Tensor) -> list:
    return [list(t.shape), list(t.stride()), str(t.dtype)]


def compile_ahead(graph: DecodeGraph, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Exports the step and compiles it into a package at `path` (written whole or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
    os.close(fd)
    # torch's own deprecation notices from inside export (its pytree) say nothing to a user of gptmini.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.inference_mode():
            program = torch.export.export(graph, inputs, strict=False)
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=partial, inductor_configs={"aot_inductor.package_constants_in_so": False})
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)


def load_ahead(graph: DecodeGraph, path: Path) -> Step:
    """The package at `path` as a step, reading the model's own tensors (not copies)."""
    library = torch._inductor.aoti_load_package(str(path))
    tensors = graph.tensors()
    library.load_constants({name: tensors[name] for name in library.get_constant_fqns()},
                           check_full_update=True, user_managed=True)
    return lambda tokens, positions, key_mask, cache: library(tokens, positions, key_mask, cache.k, cache.v, cache.index)


class CompiledStep:
    """The decode step compiled once per set of input shapes (a batch size, a cache size): every token of
    every request of that size reuses it. The first call of a size compiles it or loads it from
    `cache_dir()`; its seconds go to `seconds` (by batch size) and to `report` (stderr by default)."""

    def __init__(self, model: GPTMini, report: Callable[[str], None] | None = None) -> None:
        self.model, self.graph = model, DecodeGraph(model)
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.seconds: dict[int, float] = {}
        self.steps: dict[tuple, Step] = {}
        self.paths: list[Path] = []  # the packages on disk this step compiled or loaded
        kernels.prepare_compile()
        device = model.embed.weight.device.type
        self.ahead = device == "cpu"
        if not self.ahead:
            # One graph per batch size and model shape, all on decode_graph's code: dynamo's default cap is 8.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            mode = "reduce-overhead" if device == "cuda" else None
            self.jit_step = torch.compile(model.decode_graph, fullgraph=True, dynamic=False, mode=mode)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                 cache: StaticCache) -> torch.Tensor:
        inputs = (tokens, positions, key_mask, cache.k, cache.v, cache.index)
        shapes = tuple(tuple(t.shape) for t in inputs)
        if shapes in self.steps:
            return self.model.decode_step(tokens, positions, key_mask, cache, self.steps[shapes])
        start = time.perf_counter()
        self.steps[shapes], how, where = self._build(inputs)
        logits = self.model.decode_step(tokens, positions, key_mask, cache, self.steps[shapes])
        batch = len(tokens)
        self.seconds[batch] = time.perf_counter() - start
        self.report(f"{how} decode step for batch {batch} in {self.seconds[batch]:.1f} s{where}")
        return logits

    def _build(self, inputs: tuple[torch.Tensor, ...]) -> tuple[Step, str, str]:
        """The step, and what was done for it: compiled, or loaded from the disk (where)."""
        if not self.ahead:  # compiled by its first call
            return self.jit_step, "compiled the", ""
        path = cache_dir() / f"{step_key(self.graph, inputs)}.pt2"
        self.paths.append(path)
        if path.exists():
            try:
                return load_ahead(self.graph, path), "loaded the compiled", f" from {path.parent}"
            except Exception as exc:  # noqa: BLE001  a damaged file: it is built again, and replaced
                self.report(f"could not load {path} ({type(exc).__name__}); compiling it again")
        compile_ahead(self.graph, inputs, path)
        return load_ahead(self.graph, path), "compiled the", f" (kept in {path.parent})"
