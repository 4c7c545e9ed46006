"""The compiled UNet: torch.compile per latent shape, built in the background, never waited for.

How a UNet call finds its way (the resident UNet's `forward` is replaced by `FastPath.forward`,
so every pipeline built from it, PAG, ControlNet and inpaint alike, goes through it):

- The call's *key* is what a compiled graph is specialised on: the shapes and dtypes of its
  tensors (latents, timestep, embeddings, ControlNet residuals, SDXL's added conditions) and the
  attention processors installed (PAG swaps its own in for a run; a graph is traced with one set).
- A key already compiled runs its graph; any other key runs eager at once and, if the job allows
  it, is queued for one background thread that compiles it from a copy of the call's inputs.
  The click that brought a new size never waits for it; a later click at that size is fast.
- Graphs are traced on a *twin* of the UNet: a copy of the module tree that shares every weight
  tensor (no second copy of the weights) but has its own attention processors, fixed to the
  set the key names, so that the pipeline swapping processors on the resident UNet mid-trace
  cannot corrupt a graph.
- A graph runs under dynamo's run-only mode (`torch._dynamo.run`): if its guards do not hold
  for a call after all, that call runs eager instead of recompiling, so no job ever compiles.

LoRAs: a job with one LoRA runs in the LoRA hot slot (lora.py), and its key says so (`lora`, the
slot's generation). Its twin keeps the slot's LoRA layers and shares their weights *and* their
scaling tensors with the resident UNet, which the library's hotswap and the LoRA weight change
in place: one graph per size serves every LoRA and every weight. The twins of jobs without a
LoRA are made without any LoRA layer. A new slot (new tensors) retires the old slot's graphs.

Jobs the compiled graphs cannot serve run eager: LoRAs the slot cannot take (lora.py says why),
an IP-Adapter (its scale is a Python float the graph would be specialised on) and CPU offload
(its hooks move the weights during the call). The engine says so in the job's notice.

The compile cache lives in a folder of the data directory: TORCHINDUCTOR_CACHE_DIR for the
inductor's own caches, plus the mega-cache (torch.compiler.save_cache_artifacts) in one file
named for torch, the device and the model; a file that cannot be loaded is deleted and rebuilt.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# Keys (latent shape x processors x ...) compiled at most per model; beyond it, eager.
MAX_KEYS = 8
# Inductor settings the published diffusers recipes use on CUDA (not measured here yet).
CUDA_INDUCTOR = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True,
                 "epilogue_fusion": False}


def resolve(mode: str, device: str) -> bool:
    """Whether the fast path is on: 'auto' is on for CUDA and off elsewhere."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)} (got {mode!r})")
    return mode == "on" or (mode == "auto" and device.startswith("cuda"))


def _describe(value: Any) -> Any:
    """A hashable summary of one argument: what a graph is specialised on."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _describe(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_describe(v) for v in value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ("object", type(value).__name__)


def _float_timestep(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with its timestep as a float32 tensor on the latents' device. Samplers hand
    the UNet integer (DPM++) or float (Euler) timesteps, and a Python number or a tensor; the
    UNet turns every one into the same float embedding, so one graph serves them all instead
    of one per sampler."""
    sample = args[0] if args else kwargs.get("sample")
    if not isinstance(sample, torch.Tensor):
        return args, kwargs
    if len(args) > 1:
        timestep = args[1]
    elif "timestep" in kwargs:
        timestep = kwargs["timestep"]
    else:
        return args, kwargs
    if isinstance(timestep, torch.Tensor):
        timestep = timestep.to(device=sample.device, dtype=torch.float32)
    elif isinstance(timestep, (int, float)):
        timestep = torch.tensor(float(timestep), device=sample.device)
    if len(args) > 1:
        return (args[0], timestep, *args[2:]), kwargs
    return args, {**kwargs, "timestep": timestep}


def _label(args: tuple, kwargs: dict, processors, lora: int = 0) -> str:
    """A key as the status line names it: '768x512', '768x512 with PAG', ..."""
    sample = args[0] if args else kwargs.get("sample")
    if not isinstance(sample, torch.Tensor):
        return "?"
    scale = 8  # pixels per latent cell in every SD family
    label = f"{sample.shape[-1] * scale}x{sample.shape[-2] * scale}"
    if any(type(p).__name__.startswith("PAG") for p in processors):
        label += " with PAG"
    if kwargs.get("down_block_additional_residuals") is not None:
        label += " with ControlNet"
    if lora:
        label += " with LoRA"
    return label


def _without_lora(module) -> None:
    """Put each LoRA layer's own base layer back in its place (on a twin: the resident UNet
    keeps its LoRA layers)."""
    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer):
            parent, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent), attribute, child.get_base_layer())


def _copy_inputs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy_inputs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_inputs(v) for v in value)
    return value


@dataclass
class _Twin:
    module: Any
    compiled: Any  # torch.compile'd: compiles on a call
    runner: Any  # run-only: uses a graph whose guards hold, else eager


@dataclass
class JobView:
    """What the fast path did during one job (see FastPath.job)."""

    compiled_calls: int = 0
    eager_calls: int = 0
    compiling: set = field(default_factory=set)  # labels that ran eager while they compiled
    failed: set = field(default_factory=set)  # labels that ran eager since compiling failed


class FastPath:
    """The compiled path of one resident UNet. `allowed` is set by the engine around a job's
    pipeline call (off for the jobs the graphs cannot serve); everything else is automatic."""

    def __init__(self, unet, device: str, cache_dir: Path | None, cache_name: str,
                 max_keys: int = MAX_KEYS):
        self.unet = unet
        self.device = device
        self.max_keys = max_keys
        self.allowed = False
        self.lora = 0  # the LoRA hot slot's generation while a job uses it (lora.py), else 0
        self.disabled = ""  # why the whole path is off, once it had to be
        self.ready: set = set()
        self.pending: set = set()
        self.failed: dict = {}
        self.compiles = 0
        self.graph_calls = 0
        self.job = JobView()
        self._sizes: dict = {}
        self._twins: dict[tuple, _Twin] = {}  # (processors, LoRA generation) -> twin
        self._lora_generation = 0
        self._lock = threading.Lock()
        self._work: "queue.Queue[tuple | None]" = queue.Queue()
        self._eager = type(unet).forward.__get__(unet)
        # The attention modules, named as unet.attn_processors names their processors.
        self._attention = [(f"{name}.processor", module) for name, module in
                           unet.named_modules() if hasattr(module, "get_processor")]
        # Frozen weights, as loading a LoRA leaves them (the library freezes the base model):
        # requires_grad is part of what a graph's guards check, so a graph compiled before a
        # LoRA's first load would otherwise never match again (its calls silently eager).
        unet.requires_grad_(False)
        self._options = dict(CUDA_INDUCTOR) if device.startswith("cuda") else {}
        if device.startswith("cuda"):
            # Convolutions run faster channels-last on tensor cores; the weights are converted
            # in place, so the eager path (same tensors) gets it too.
            unet.to(memory_format=torch.channels_last)
            # CUDA graphs for batch-1 latency; "max-autotune" would also search kernels, which
            # takes minutes per size (to be measured against this on a GPU).
            self._options.update(torch._inductor.list_mode_options("reduce-overhead"))
        # Each key is a cache entry of the UNet's forward; dynamo's default limit (8) would
        # silently stop compiling new sizes before MAX_KEYS is reached.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                    4 * max_keys)
        self.cache_file = None
        if cache_dir is not None:
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            # The inductor reads its cache folder from the environment, and writes its default
            # there itself when torch is imported; only a folder the user chose wins over ours.
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            if current is None or os.path.abspath(current) == os.path.abspath(
                    default_cache_dir()):
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
            self.cache_file = cache_dir / f"{cache_name}.bin"
            self._load_cache()
        unet.forward = self.forward
        self._thread = threading.Thread(target=self._compile_loop, name="unet-compile",
                                        daemon=True)
        self._thread.start()

    # -- the call ------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if not self.allowed or self.disabled:
            return self._eager(*args, **kwargs)
        args, kwargs = _float_timestep(args, kwargs)
        # Read per call, so cheaply: the attention modules were listed once (PAG and the
        # IP-Adapter swap processors, never modules); unet.attn_processors walks the whole tree.
        signature = tuple(id(module.processor) for _, module in self._attention)
        lora = self.lora
        if lora and lora != self._lora_generation:
            self._retire_lora(lora)
        key = (signature, lora, _describe(args), _describe(kwargs))
        if key not in self._sizes:
            self._sizes[key] = _label(args, kwargs, self._processors().values(), lora)
        if key in self.ready:
            self.job.compiled_calls += 1
            return self._twin(signature, lora).runner(*args, **kwargs)
        self.job.eager_calls += 1
        with self._lock:
            fresh = (key not in self.pending and key not in self.failed and
                     len(self.ready) + len(self.pending) < self.max_keys)
            if fresh:
                self.pending.add(key)
        if fresh:
            twin = self._twin(signature, lora)
            self._work.put((key, twin, _copy_inputs(args), _copy_inputs(kwargs)))
        if key in self.failed:
            self.job.failed.add(self._sizes[key])
        elif key in self.pending:
            self.job.compiling.add(self._sizes[key])
        return self._eager(*args, **kwargs)

    def start_job(self) -> None:
        self.job = JobView()

    def job_notice(self) -> str:
        """What the status line says about this job's sizes ('' when all ran compiled)."""
        waiting, broken = sorted(self.job.compiling), sorted(self.job.failed)
        parts = []
        if waiting:
            parts.append(f"compiling for {', '.join(waiting)} (eager until ready)")
        if broken:
            parts.append(f"compiling for {', '.join(broken)} failed: eager")
        return "; ".join(parts)

    def size(self, key) -> str:
        """'WIDTHxHEIGHT' of a key's latents."""
        return self._sizes.get(key, "?")

    def status(self) -> dict:
        with self._lock:
            return {"ready": sorted({self.size(k) for k in self.ready}),
                    "compiling": sorted({self.size(k) for k in self.pending}),
                    "failed": sorted({self.size(k) for k in self.failed}),
                    "disabled": self.disabled}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to compile (for tests and the benchmark); whether so."""
        import time

        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending

    def close(self) -> None:
        """Put the resident UNet's own forward back and stop the compile thread."""
        self.unet.__dict__.pop("forward", None)
        self._work.put(None)

    # -- twins and compiling ---------------------------------------------------------------
    def _processors(self) -> dict:
        """The resident UNet's attention processors by name, as set_attn_processor takes them."""
        return {name: module.processor for name, module in self._attention}

    def _retire_lora(self, generation: int) -> None:
        """A new LoRA slot: the graphs of the old one hold its old tensors, so they go."""
        with self._lock:
            self._lora_generation = generation
            for key in [k for k in self.ready if k[1] not in (0, generation)]:
                self.ready.discard(key)
            for key in [k for k in self._twins if k[1] not in (0, generation)]:
                del self._twins[key]

    def _twin(self, signature: tuple, lora: int = 0) -> _Twin:
        twin = self._twins.get((signature, lora))
        if twin is None:
            # Every tensor is shared through the memo: the copy holds modules, not weights.
            # With the LoRA slot, its scaling tensors too (a LoRA weight is written into them).
            shared = [*self.unet.parameters(), *self.unet.buffers()]
            if lora:
                shared += [t for m in self.unet.modules() if isinstance(m, BaseTunerLayer)
                           for t in getattr(m, "scaling", {}).values()
                           if isinstance(t, torch.Tensor)]
            memo = {id(t): t for t in shared}
            saved = self.unet.__dict__.pop("forward", None)
            try:
                module = copy.deepcopy(self.unet, memo)
            finally:
                if saved is not None:
                    self.unet.forward = saved
            if not lora:
                _without_lora(module)
            module.set_attn_processor(self._processors())
            twin = _Twin(module, torch.compile(module, backend=self._backend, fullgraph=True,
                                               dynamic=False),
                         torch._dynamo.run(module))
            self._twins[(signature, lora)] = twin
        return twin

    def _backend(self, graph, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(graph, example_inputs, config_patches=self._options or None)

        def run(*args):
            self.graph_calls += 1
            return compiled(*args)

        return run

    def _compile_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            key, twin, args, kwargs = item
            try:
                # no_grad as the pipelines run (inference mode would be another guard).
                with torch.no_grad():
                    twin.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: stay eager
                # Dynamo wraps the compiler's own error; the innermost one says what happened.
                inner = getattr(exc, "inner_exception", None) or exc.__cause__
                while isinstance(inner, Exception):
                    exc = inner
                    inner = getattr(exc, "inner_exception", None) or exc.__cause__
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                log.warning("compiling the UNet for %s failed (%s: %s); that size stays eager",
                            self.size(key), type(exc).__name__, first)
                with self._lock:
                    self.pending.discard(key)
                    self.failed[key] = f"{type(exc).__name__}: {exc}"
                    if len(self.failed) >= 3:
                        self.disabled = "compiling failed three times; the UNet runs eager"
                continue
            with self._lock:
                self.compiles += 1
                self.pending.discard(key)
                if key[1] in (0, self._lora_generation):  # else its LoRA slot was replaced
                    self.ready.add(key)
            self._save_cache()

    # -- the on-disk cache -------------------------------------------------------------------
    def _load_cache(self) -> None:
        if self.cache_file is None or not self.cache_file.exists():
            return
        try:
            # None: nothing usable in it (the library logs a corrupt file and returns None).
            problem = None if torch.compiler.load_cache_artifacts(
                self.cache_file.read_bytes()) is not None else "nothing usable in it"
        except Exception as exc:  # noqa: BLE001 - a bad cache is rebuilt, never fatal
            problem = type(exc).__name__
        if problem:
            log.warning("the compile cache %s could not be read (%s); it is rebuilt",
                        self.cache_file.name, problem)
            self.cache_file.unlink(missing_ok=True)

    def _save_cache(self) -> None:
        if self.cache_file is None:
            return
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                return
            from ..files import write_atomic

            write_atomic(self.cache_file, saved[0], overwrite=True)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written costs speed only
            log.warning("the compile cache could not be written (%s: %s)", type(exc).__name__,
                        exc)


def cache_name(model_key: str, device: str, dtype) -> str:
    """The mega-cache file's name: a hash of torch's version, the device and the model."""
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    text = f"{torch.__version__}|{gpu}|{model_key}|{dtype}"
    return "unet-" + hashlib.sha256(text.encode()).hexdigest()[:16]
