"""The compiled UNet and VAE: torch.compile per shape, built in the background, never waited for.

How a UNet call finds its way (the resident UNet's `forward` is replaced by the fast path's
`_call`, so every pipeline built from it, PAG, ControlNet and inpaint alike, goes through it):

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
- Fused QKV projections: each attention module's q, k and v weights are one tensor (the
  resident's separate weights are views of its rows, so no memory is added) and a twin's
  standard attention reads them with one matrix multiply (the library's fused processor).
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

The VAE's encoder and decoder are compiled the same way (each a *part*, like the UNet: its own
keys, twins and graphs, one compile thread for all, the UNet's sizes first). Their graphs run
without CUDA graphs: a VAE call is a few large convolutions, not hundreds of small kernels, so
launches cost little there, while a CUDA graph would keep the call's activations (gigabytes at
1024 px) reserved between jobs. The VAE runs eager under tiling (its tiles are other shapes,
and tiling is the mode for too little memory) and under CPU offload; the SDXL pipelines turn
a half-precision VAE into float32 and back during each job (its config's force_upcast), so
such a VAE is not compiled at all (vae_to_compile).

The compile cache lives in a folder of the data directory: TORCHINDUCTOR_CACHE_DIR for the
inductor's own caches, plus the mega-cache (torch.compiler.save_cache_artifacts) in one file
named for torch, the device and the model; a file that cannot be loaded is deleted and rebuilt.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from ..threads import run_in_passing_thread

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# The parts compiled: their names in keys, labels and the status.
UNET, VAE_ENCODER, VAE_DECODER = "UNet", "VAE encoder", "VAE decoder"
# Keys (latent shape x processors x ...) compiled at most per part; beyond it, eager.
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


def _label(args: tuple, kwargs: dict, processors, lora: int = 0, part: str = UNET,
           scale: int = 8) -> str:
    """A key as the status line names it: '768x512', '768x512 with PAG', 'VAE decoder
    768x512', ... scale: pixels per cell of the call's input (8 for the UNet's latents)."""
    sample = args[0] if args else kwargs.get("sample")
    if not isinstance(sample, torch.Tensor):
        return "?"
    label = f"{sample.shape[-1] * scale}x{sample.shape[-2] * scale}"
    if part != UNET:
        return f"{part} {label}"
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


def _base(layer):
    """A projection's own Linear (under a LoRA layer, its base layer)."""
    return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer


def _projections(module) -> tuple[str, ...]:
    """The projections of an attention module that the fused processor reads as one: q, k and
    v of a self-attention (to_qkv), k and v of a cross-attention (to_kv); () if none."""
    names = ("to_k", "to_v") if getattr(module, "is_cross_attention", False) else \
        ("to_q", "to_k", "to_v")
    layers = [_base(getattr(module, name, None)) for name in names]
    if not all(isinstance(layer, torch.nn.Linear) for layer in layers):
        return ()
    if len({(layer.in_features, layer.out_features, layer.bias is not None)
            for layer in layers}) != 1:
        return ()
    return tuple(names)


def _join(module, names: tuple[str, ...], joined: torch.nn.Linear | None):
    """One Linear whose weight (and bias) is the projections' weights one after another, and
    each projection's weight (and bias) a view of its rows: the same numbers in the same
    memory as before, readable as one matrix. The library's fuse_projections copies them into
    a new Linear instead, a second copy beside the originals that the eager jobs, the LoRA
    layers and PAG's processors go on using. Given `joined` (after a move split the views,
    as model offload moves each weight alone), its tensors are replaced in place."""
    layers = [_base(getattr(module, name)) for name in names]
    if joined is not None and all(
            layer.weight.device == joined.weight.device and
            layer.weight.untyped_storage().data_ptr() ==
            joined.weight.untyped_storage().data_ptr() for layer in layers):
        return joined  # still views of it
    with torch.no_grad():
        weight = torch.cat([layer.weight.detach() for layer in layers])
        bias = torch.cat([layer.bias.detach() for layer in layers]) \
            if layers[0].bias is not None else None
    rows = 0
    for layer in layers:
        count = layer.weight.shape[0]
        layer.weight.data = weight[rows:rows + count]
        if bias is not None:
            layer.bias.data = bias[rows:rows + count]
        rows += count
    if joined is None:
        # On the meta device: the Linear's own weight is replaced at once, never allocated.
        joined = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                 device="meta")
        joined.weight = torch.nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            joined.bias = torch.nn.Parameter(bias, requires_grad=False)
    else:
        joined.weight.data = weight
        if bias is not None:
            joined.bias.data = bias
    return joined


@dataclass
class _Twin:
    module: Any
    compiled: Any  # torch.compile'd: compiles on a call
    runner: Any  # run-only: uses a graph whose guards hold, else eager


@dataclass(eq=False)
class _Part:
    """One compiled module (the UNet, the VAE's encoder or its decoder)."""

    name: str
    module: Any
    eager: Any  # the module's own forward
    attention: list  # (name, attention module), listed once
    options: dict  # the inductor's settings for its graphs
    scale: int  # pixels per cell of its input, for the labels
    priority: int  # compiled in this order when several wait (the UNet first)
    twins: dict = field(default_factory=dict)  # (processors, LoRA generation) -> _Twin
    graph_calls: int = 0  # the runs of its compiled graphs


@dataclass
class JobView:
    """What the fast path did during one job (see FastPath.job): the UNet's calls, the VAE's."""

    compiled_calls: int = 0
    eager_calls: int = 0
    vae_compiled_calls: int = 0
    vae_eager_calls: int = 0
    compiling: set = field(default_factory=set)  # labels that ran eager while they compiled
    failed: set = field(default_factory=set)  # labels that ran eager since compiling failed


class FastPath:
    """The compiled path of one resident UNet and, given one, its VAE. `allowed` (the UNet)
    and `vae_allowed` are set by the engine around a job's pipeline call (off for the jobs the
    graphs cannot serve); everything else is automatic."""

    def __init__(self, unet, device: str, cache_dir: Path | None, cache_name: str,
                 max_keys: int = MAX_KEYS, vae=None):
        self.unet = unet
        self.device = device
        self.max_keys = max_keys
        self.allowed = False
        self.vae_allowed = False
        self.lora = 0  # the LoRA hot slot's generation while a job uses it (lora.py), else 0
        self.disabled = ""  # why the whole path is off, once it had to be
        self.ready: set = set()
        self.pending: set = set()
        self.failed: dict = {}
        self.compiles = 0
        self.job = JobView()
        self._sizes: dict = {}
        self._lora_generation = 0
        self._lock = threading.Lock()
        self._order = itertools.count()  # ties in the work queue: first come, first compiled
        self._work: "queue.PriorityQueue[tuple]" = queue.PriorityQueue()
        cuda = device.startswith("cuda")
        options = dict(CUDA_INDUCTOR) if cuda else {}
        # CUDA graphs for the UNet's batch-1 latency; "max-autotune" would also search kernels,
        # which takes minutes per size (to be measured against this on a GPU).
        unet_options = {**options, **torch._inductor.list_mode_options("reduce-overhead")} \
            if cuda else options
        self.parts = [self._part(UNET, unet, unet_options, 8, 0)]
        if vae is not None:
            scale = 2 ** (len(vae.config.block_out_channels) - 1)
            self.parts += [self._part(VAE_ENCODER, vae.encoder, options, 1, 1),
                           self._part(VAE_DECODER, vae.decoder, options, scale, 1)]
        self._unet = self.parts[0]
        if cuda:
            # Convolutions run faster channels-last on tensor cores; the weights are converted
            # in place, so the eager path (same tensors) gets it too.
            unet.to(memory_format=torch.channels_last)
            if vae is not None:
                vae.to(memory_format=torch.channels_last)
        # Attention module name -> (projections, their joined Linear) for the fused QKV
        # projections of the UNet's graphs (its VAE attention runs once per picture: not worth it).
        self._fused: dict[str, tuple[tuple[str, ...], torch.nn.Linear]] = {}
        self.fuse()
        # Each key is a cache entry of a part's forward; dynamo's default limit (8) would
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
        for part in self.parts:
            part.module.forward = functools.partial(self._call, part)
        self._thread = threading.Thread(target=self._compile_loop, name="compile",
                                        daemon=True)
        self._thread.start()

    def _part(self, name: str, module, options: dict, scale: int, priority: int) -> _Part:
        # Frozen weights, as loading a LoRA leaves them (the library freezes the base model):
        # requires_grad is part of what a graph's guards check, so a graph compiled before a
        # LoRA's first load would otherwise never match again (its calls silently eager).
        module.requires_grad_(False)
        # The attention modules, listed once (PAG and the IP-Adapter swap processors, never
        # modules): a walk of the whole tree on every call would cost more than a graph's run.
        attention = [(n, m) for n, m in module.named_modules() if hasattr(m, "get_processor")]
        return _Part(name, module, type(module).forward.__get__(module), attention, options,
                     scale, priority)

    def fuse(self) -> None:
        """The UNet's q, k and v weights (k and v in cross-attention) joined into one tensor
        per attention module, of which they are views (see _join); joined again where a move
        split them. The engine calls it before each job: cheap when nothing moved."""
        for name, module in self._unet.attention:
            names, joined = self._fused.get(name, ((), None))
            names = names or _projections(module)
            if names:
                self._fused[name] = (names, _join(module, names, joined))

    @property
    def graph_calls(self) -> int:
        """The runs of the UNet's compiled graphs (a guard that failed would not count)."""
        return self._unet.graph_calls

    @property
    def vae_graph_calls(self) -> int:
        return sum(part.graph_calls for part in self.parts[1:])

    # -- the call ------------------------------------------------------------------------
    def _call(self, part: _Part, *args, **kwargs):
        """A part's call (its forward is this while the fast path is on)."""
        unet = part is self._unet
        if self.disabled or not (self.allowed if unet else self.vae_allowed):
            return part.eager(*args, **kwargs)
        if unet:
            args, kwargs = _float_timestep(args, kwargs)
        # Read per call, so cheaply: the attention modules were listed once.
        signature = tuple(id(module.processor) for _, module in part.attention)
        lora = self.lora if unet else 0
        if lora and lora != self._lora_generation:
            self._retire_lora(lora)
        key = (part.name, signature, lora, _describe(args), _describe(kwargs))
        if key not in self._sizes:
            self._sizes[key] = _label(args, kwargs, [m.processor for _, m in part.attention],
                                      lora, part.name, part.scale)
        if key in self.ready:
            self._count(unet, compiled=True)
            return self._twin(part, signature, lora).runner(*args, **kwargs)
        self._count(unet, compiled=False)
        with self._lock:
            fresh = (key not in self.pending and key not in self.failed and
                     sum(k[0] == part.name for k in self.ready | self.pending) < self.max_keys)
            if fresh:
                self.pending.add(key)
        if fresh:
            twin = self._twin(part, signature, lora)
            self._work.put((part.priority, next(self._order),
                            (key, part, twin, _copy_inputs(args), _copy_inputs(kwargs))))
        if key in self.failed:
            self.job.failed.add(self._sizes[key])
        elif key in self.pending:
            self.job.compiling.add(self._sizes[key])
        return part.eager(*args, **kwargs)

    def _count(self, unet: bool, compiled: bool) -> None:
        if unet and compiled:
            self.job.compiled_calls += 1
        elif unet:
            self.job.eager_calls += 1
        elif compiled:
            self.job.vae_compiled_calls += 1
        else:
            self.job.vae_eager_calls += 1

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
        """The labels ready, compiling and failed, why the path is off (if it is) and the
        last job's calls: compiled and eager, of the UNet and of the VAE."""
        job = self.job
        with self._lock:
            return {"ready": sorted({self.size(k) for k in self.ready}),
                    "compiling": sorted({self.size(k) for k in self.pending}),
                    "failed": sorted({self.size(k) for k in self.failed}),
                    "disabled": self.disabled,
                    "last_job": {"unet_compiled": job.compiled_calls,
                                 "unet_eager": job.eager_calls,
                                 "vae_compiled": job.vae_compiled_calls,
                                 "vae_eager": job.vae_eager_calls}}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to compile (for tests and the benchmark); whether so."""
        import time

        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending

    def close(self) -> None:
        """Put each part's own forward back and stop the compile thread."""
        for part in self.parts:
            part.module.__dict__.pop("forward", None)
        self._work.put((-1, next(self._order), None))

    # -- twins and compiling ---------------------------------------------------------------
    def _retire_lora(self, generation: int) -> None:
        """A new LoRA slot: the graphs of the old one hold its old tensors, so they go."""
        with self._lock:
            self._lora_generation = generation
            for key in [k for k in self.ready if k[2] not in (0, generation)]:
                self.ready.discard(key)
            twins = self._unet.twins
            for key in [k for k in twins if k[1] not in (0, generation)]:
                del twins[key]

    def _twin(self, part: _Part, signature: tuple, lora: int = 0) -> _Twin:
        twin = part.twins.get((signature, lora))
        if twin is None:
            # Every tensor is shared through the memo: the copy holds modules, not weights.
            # With the LoRA slot, its scaling tensors too (a LoRA weight is written into them).
            source = part.module
            shared = [*source.parameters(), *source.buffers()]
            if lora:
                shared += [t for m in source.modules() if isinstance(m, BaseTunerLayer)
                           for t in getattr(m, "scaling", {}).values()
                           if isinstance(t, torch.Tensor)]
            memo = {id(t): t for t in shared}
            saved = source.__dict__.pop("forward", None)
            try:
                module = copy.deepcopy(source, memo)
            finally:
                if saved is not None:
                    source.forward = saved
            if not lora:
                _without_lora(module)
            # The processors installed now, fixed in the twin (the same objects: the
            # pipeline's later swaps on the resident modules do not reach it).
            for name, resident in part.attention:
                module.get_submodule(name).set_processor(resident.processor)
            if part is self._unet:
                self._fused_projections(module)
            twin = _Twin(module, torch.compile(module, backend=functools.partial(
                self._backend, part), fullgraph=True, dynamic=False), torch._dynamo.run(module))
            part.twins[(signature, lora)] = twin
        return twin

    def _fused_projections(self, twin) -> None:
        """In a UNet twin, each attention module that runs the library's standard processor
        and has no LoRA on its projections reads them as one matrix (its joined Linear, the
        same tensor as the resident's weights) with the library's fused processor: one
        matrix multiply instead of three. LoRA twins keep the separate projections where the
        slot's LoRA layers sit on them; other processors (PAG's, slicing) stay as they are."""
        from diffusers.models.attention_processor import (AttnProcessor2_0,
                                                          FusedAttnProcessor2_0)

        for name, (names, joined) in self._fused.items():
            module = twin.get_submodule(name)
            if type(module.processor) is not AttnProcessor2_0 or any(
                    isinstance(getattr(module, n), BaseTunerLayer) for n in names):
                continue
            setattr(module, "to_qkv" if len(names) == 3 else "to_kv", joined)
            module.set_processor(FusedAttnProcessor2_0())

    def _backend(self, part: _Part, graph, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(graph, example_inputs, config_patches=part.options or None)

        def run(*args):
            part.graph_calls += 1
            return compiled(*args)

        return run

    @staticmethod
    def _compile_one(twin: _Twin, args: tuple, kwargs: dict) -> None:
        # no_grad as the pipelines run (inference mode would be another guard).
        with torch.no_grad():
            twin.compiled(*args, **kwargs)

    def _compile_loop(self) -> None:
        while True:
            item = self._work.get()[2]
            if item is None:
                return
            key, part, twin, args, kwargs = item
            try:
                # The compile runs the new graph once, in a thread that ends with it, so that
                # the OpenMP team its CPU kernels start ends too (see threads.py: a team kept
                # in this long-lived thread slowed every later job on the CPU).
                run_in_passing_thread(self._compile_one, twin, args, kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: stay eager
                # Dynamo wraps the compiler's own error; the innermost one says what happened.
                inner = getattr(exc, "inner_exception", None) or exc.__cause__
                while isinstance(inner, Exception):
                    exc = inner
                    inner = getattr(exc, "inner_exception", None) or exc.__cause__
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                what = f"the UNet for {self.size(key)}" if part is self._unet else \
                    f"the {self.size(key)}"
                log.warning("compiling %s failed (%s: %s); that size stays eager", what,
                            type(exc).__name__, first)
                with self._lock:
                    self.pending.discard(key)
                    self.failed[key] = f"{type(exc).__name__}: {exc}"
                    if len(self.failed) >= 3:
                        self.disabled = "compiling failed three times; the UNet and VAE run eager"
                continue
            with self._lock:
                self.compiles += 1
                self.pending.discard(key)
                if key[2] in (0, self._lora_generation):  # else its LoRA slot was replaced
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


def vae_to_compile(pipe, family: str):
    """The pipeline's VAE if its graphs can serve every job, else None: the SDXL pipelines
    turn a half-precision VAE whose config says force_upcast into float32 for each job and
    back after, which a background compile tracing at the same time would see half done."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "encoder") or not hasattr(vae, "decoder"):
        return None
    if family == "sdxl" and vae.dtype != torch.float32 and getattr(vae.config, "force_upcast",
                                                                   False):
        return None
    return vae


def cache_name(model_key: str, device: str, dtype) -> str:
    """The mega-cache file's name: a hash of torch's version, the device and the model."""
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    text = f"{torch.__version__}|{gpu}|{model_key}|{dtype}"
    return "unet-" + hashlib.sha256(text.encode()).hexdigest()[:16]
