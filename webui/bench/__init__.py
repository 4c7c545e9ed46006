"""`python -m webui.bench`: plain diffusers against this engine, in one process, on the same inputs.

Speed is judged here, never in tests. Each case runs plain diffusers img2img as a user would
write it (plain.py: the library's img2img pipeline from the same weights, fp16 on CUDA, default
attention, no compile) and then this engine through its public interface (a JobRequest on the
queue, progress and previews followed, the Result read), and prints one JSON line: seconds per
image (median of `--runs` after `--warmup` jobs, min and max), UNet calls per second, peak memory
(VRAM on CUDA, resident memory on the CPU), warm-up seconds, and `ratio` = plain / engine
seconds per image. Plain diffusers has no PAG, so a PAG 3 case's ratio shows what the studio's
default costs against a plain call. The engine's figures also say what its step previews cost:
previews sent per image, milliseconds each, and their share of the job's time.

The models are random weights in the real layer shapes (random-sd15, random-sdxl: the FLOPs of
a real checkpoint, no download) on CUDA, and tiny-random at 64x64 and 128x128 on the CPU (well
under a minute). `--cold` also times a fresh process to its first image, with an empty and then
with a warm compile cache. `--compile on|off|auto` picks the engine's compiled UNet and VAE
(auto: on for CUDA); with it on, the warm-up includes each size's compile, and each case
reports its last timed job's compiled and eager calls. The text parsers are timed on 1 MB of
adversarial text each (`--parsers-only` for those alone). `--cluster local --replicas N`
measures the cluster engine's throughput instead (cluster.py), and `--load --clients N
--requests K` serves the studio on loopback to N concurrent clients, page and REST API
together (load.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from ..engine import PREVIEW_DECODERS
from ..threads import run_in_passing_thread
from .parsers import PARSER_BUDGET_S, PARSER_TEXT_BYTES, adversarial_texts, parser_cases

PROMPT = "a lighthouse at dusk, oil painting"
NEGATIVE = "blurry, lowres"
SEED = 1
# The cases: img2img 25 steps x strength 0.8, CFG 7.5, batch 1.
DEFAULTS = {"steps": 25, "strength": 0.8, "cfg": 7.5}
SCHEDULERS = ("Euler a", "DPM++ 2M Karras")
PAG_SCALES = (0.0, 3.0)
GPU_CASES = (("random-sd15", (512, 512)), ("random-sd15", (768, 512)),
             ("random-sdxl", (1024, 1024)))
CPU_CASES = (("tiny-random", (64, 64)), ("tiny-random", (128, 128)))


def default_sizes(model: str) -> list[tuple[int, int]]:
    """The sizes a model is benchmarked at unless --size says otherwise."""
    sizes = [size for name, size in GPU_CASES + CPU_CASES if name == model]
    if not sizes and model.startswith("tiny-random"):
        sizes = [size for _, size in CPU_CASES]
    return sizes or [(512, 512)]


def init_picture(width: int, height: int):
    """The same init picture for both sides: a radial gradient, smooth like a photograph."""
    from PIL import Image

    return Image.radial_gradient("L").convert("RGB").resize((width, height))


def _stats(times: list[float], per_job: int) -> dict:
    median = statistics.median(times)
    return {"s_per_image": round(median / per_job, 4),
            "s_per_image_min": round(min(times) / per_job, 4),
            "s_per_image_max": round(max(times) / per_job, 4), "runs": len(times)}


def _memory(device: str, engine=None) -> dict:
    """Peak VRAM since the last reset on CUDA; on the CPU the resident size now and the
    process's peak so far (the CPU has no peak counter to reset between the two sides)."""
    if device.startswith("cuda"):
        import torch

        return {"peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    out = {}
    if engine is not None:
        rss = engine.memory_status().get("process_rss")
        if rss:
            out["rss_gib"] = round(rss / 2**30, 3)
    try:
        import resource

        out["process_peak_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    except ImportError:
        pass
    return out


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def plain_side(model: str, size: tuple[int, int], scheduler: str, device: str, dtype,
               settings: dict, runs: int, warmup: int):
    """(measurements, first image) of plain diffusers for one case."""
    from .plain import PlainPipeline

    started = time.perf_counter()
    pipe = PlainPipeline(model, device, dtype)
    init = init_picture(*size)
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, strength=settings["strength"],
                steps=settings["steps"], cfg=settings["cfg"], scheduler=scheduler, seed=SEED)
    try:
        for _ in range(warmup):
            pipe.run(init, **call)
        warm = time.perf_counter() - started
        _reset_peak(device)
        done = [pipe.run(init, **call) for _ in range(runs)]
        times = [run.seconds for run in done]
        calls = done[-1].unet_calls
        out = {**_stats(times, 1), "unet_calls": calls,
               "unet_calls_per_s": round(calls / statistics.median(times), 2),
               "warmup_s": round(warm, 3), **_memory(device)}
        return out, done[-1].image
    finally:
        pipe.close()


def engine_side(engine, model: str, size: tuple[int, int], scheduler: str, pag: float,
                dtype: str, settings: dict, runs: int, warmup: int):
    """(measurements, first image) of this engine for one case, through its interface."""
    from .. import params as parameters
    from ..engine import JobRequest

    init = init_picture(*size)
    request = JobRequest(parameters.make(
        model=model, width=size[0], height=size[1], steps=settings["steps"],
        strength=settings["strength"], guidance_scale=settings["cfg"], scheduler=scheduler,
        pag_scale=pag, dtype=dtype, seed=SEED, prompt=PROMPT, negative_prompt=NEGATIVE,
        draft=settings.get("draft", 0)),
        init, save=False)

    shown = []  # previews sent per job

    def job():
        t0 = time.perf_counter()
        handle = engine.submit(request)
        # Followed as a front door does: progress and previews are part of the cost.
        shown.append(sum(getattr(update, "preview", None) is not None
                         for update in handle.updates()))
        result = handle.result()
        return time.perf_counter() - t0, result

    started = time.perf_counter()
    for _ in range(warmup):
        job()
    if warmup and engine.compile_status() is not None:
        # The compiled path builds each size in the background: wait for it, then run once
        # more so the timed jobs meet ready graphs (warm-up then includes the compile).
        engine.wait_for_compiles(3600)
        job()
    warm = time.perf_counter() - started
    _reset_peak(engine.device)
    done = [job() for _ in range(runs)]
    times = [seconds for seconds, _ in done]
    result = done[-1][1]
    # One UNet call per step: the pipelines batch CFG (and PAG) into a single call.
    calls = result.effective_steps
    out = {**_stats(times, 1), "unet_calls": calls,
           "unet_calls_per_s": round(calls / statistics.median(times), 2),
           "warmup_s": round(warm, 3), **_memory(engine.device, engine),
           **preview_cost(engine, size, statistics.median(shown[-runs:]),
                          statistics.median(times))}
    status = engine.compile_status()
    if status is not None:
        # The last timed job's UNet and VAE calls, compiled and eager: a figure for the
        # compiled path is only one if its calls ran compiled.
        out["compiled_calls"] = status["last_job"]
    if result.notice:
        out["notice"] = result.notice
    return out, result.images[0].image


def preview_cost(engine, size: tuple[int, int], per_image: float, seconds: float) -> dict:
    """What the step previews cost a job: previews sent per image, the time one takes (the
    latents read back from the device and turned into a picture, median of 20, timed alone:
    inside a job the read-back also waits for the step's queued work, which is not its cost)
    and their share of the job's seconds, in percent."""
    import torch

    dtype = torch.float16 if engine.device.startswith("cuda") else torch.float32
    latents = torch.randn(1, 4, size[1] // 8, size[0] // 8, device=engine.device, dtype=dtype)
    make, _ = engine.step_previewer(engine.family, dtype)
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        make(latents)
        times.append(time.perf_counter() - t0)
    one = statistics.median(times[1:])  # the first one also warms the decoder up
    return {"previews_per_image": per_image, "preview_ms": round(one * 1000, 3),
            "preview_share_pct": round(100 * per_image * one / seconds, 3)}


def random_tiny_vaes(models_dir: str) -> None:
    """Tiny VAEs with random weights in the published ones' shape (the library's default
    AutoencoderTiny: the same work per preview, no download) where the engine looks for them,
    for `--preview-decoder tiny`."""
    from diffusers import AutoencoderTiny

    from ..engine import TINY_VAE_NAMES, TINY_VAE_SUBDIR

    vae = AutoencoderTiny()
    for name in dict.fromkeys(TINY_VAE_NAMES.values()):
        vae.save_pretrained(os.path.join(models_dir, TINY_VAE_SUBDIR, name))


def picture_difference(a, b) -> float:
    """The largest difference of one channel of one pixel, 0-255 (0: the same picture)."""
    import numpy as np

    return float(np.abs(np.asarray(a.convert("RGB"), dtype=np.int16)
                        - np.asarray(b.convert("RGB"), dtype=np.int16)).max())


def run_cases(engine, cases, schedulers, pags, settings: dict, runs: int, warmup: int,
              dtype: str, emit) -> list[dict]:
    """Every (model, size) x scheduler: the plain side once, the engine once per PAG scale."""
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        dtype if dtype != "auto" else ("fp16" if engine.device.startswith("cuda") else "fp32")]
    lines = []
    for model, size in cases:
        for scheduler in schedulers:
            # In a thread that ends with it, as the engine's compiles run: an OpenMP team left
            # in this thread would slow the engine's job thread on the CPU (threads.py).
            plain, plain_image = run_in_passing_thread(
                plain_side, model, size, scheduler, engine.device, torch_dtype, settings, runs,
                warmup)
            for pag in pags:
                ours, image = engine_side(engine, model, size, scheduler, pag, dtype, settings,
                                          runs, warmup)
                drafting = f" draft {settings['draft']}" if settings.get("draft") else ""
                line = {"case": f"{model} {size[0]}x{size[1]} {scheduler} PAG {pag:g}{drafting}",
                        "model": model, "size": f"{size[0]}x{size[1]}", "scheduler": scheduler,
                        "pag_scale": pag, **settings, "batch_size": 1,
                        "device": engine.device, "plain": plain, "engine": ours,
                        "ratio": round(plain["s_per_image"] / ours["s_per_image"], 3),
                        "max_pixel_difference": picture_difference(plain_image, image)}
                emit(line)
                lines.append(line)
            engine.unload()  # each case group starts from a loaded model, as a warm studio
    return lines


def cold_starts(model: str, size: tuple[int, int], device: str | None, compile: str) -> dict:
    """Seconds from starting a fresh process to its first image, with an empty and then a
    warm compile cache (a new folder for this measurement). The first process also waits for
    its compiles, so that the second finds them in the cache."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="img2img-bench-cache-") as cache:
        for label in ("empty_cache", "warm_cache"):
            command = [sys.executable, "-m", "webui.bench", "--first-image", "--model", model,
                       "--size", f"{size[0]}x{size[1]}", "--compile", compile,
                       "--compile-cache", cache] + (["--device", device] if device else [])
            # Every compiler cache in the new folder: one this process set (or the user's)
            # would make the "empty" start warm.
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
                   "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
            started = time.time()
            done = subprocess.run(command, check=True, capture_output=True, text=True,
                                  timeout=3600, env=env)
            report = json.loads(done.stdout.strip().splitlines()[-1])
            out[f"{label}_first_image_s"] = round(report["first_image_at"] - started, 3)
            if report.get("compiled_at"):
                out[f"{label}_compiled_s"] = round(report["compiled_at"] - started, 3)
    return out


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT (got {text!r})") from None
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise argparse.ArgumentTypeError(f"--size must be from 8 to 4096 pixels a side (got "
                                         f"{text!r})")
    return width, height


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def arguments(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m webui.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append",
                        help="tiny-random, random-sd15, random-sdxl or a diffusers folder "
                        "(repeatable; default: random-sd15 and random-sdxl on CUDA, tiny-random "
                        "on the CPU)")
    parser.add_argument("--size", action="append", type=_size, metavar="WxH",
                        help="picture size (repeatable; default per model: 512x512 and 768x512 "
                        "for SD 1.5, 1024x1024 for SDXL, 64x64 and 128x128 for tiny-random)")
    parser.add_argument("--scheduler", action="append", choices=SCHEDULERS,
                        help="sampler (repeatable; default: both)")
    parser.add_argument("--pag", action="append", type=float, metavar="SCALE",
                        help="the engine's PAG scale (repeatable; default: 0 and 3)")
    parser.add_argument("--steps", type=_positive, default=None,
                        help=f"sampling steps (default {DEFAULTS['steps']}; 2 with --load, "
                        "which measures the serving, not the sampling)")
    parser.add_argument("--strength", type=float, default=DEFAULTS["strength"])
    parser.add_argument("--cfg", type=float, default=DEFAULTS["cfg"])
    parser.add_argument("--runs", type=_positive, default=5,
                        help="timed jobs per side and case; the median is reported (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed jobs before them (default 1)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp16", "bf16", "fp32"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="the engine's compiled UNet and VAE (auto: on for CUDA); the "
                        "warm-up waits for each size's compile, so the timed jobs run compiled")
    parser.add_argument("--compile-cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--draft", type=int, default=0, choices=range(0, 5), metavar="0-4",
                        help="the engine's draft mode (lossy feature reuse; the plain side runs "
                        "every step in full, so `ratio` and `max_pixel_difference` show what it "
                        "gains and costs; default 0)")
    parser.add_argument("--preview-decoder", choices=PREVIEW_DECODERS, default="approx",
                        help="the engine's step previews (tiny: random-weight tiny VAEs in the "
                        "published shape; default approx)")
    parser.add_argument("--cold", action="store_true",
                        help="also time a fresh process to its first image (empty, warm cache)")
    parser.add_argument("--out", help="also write the JSON lines to this file")
    parser.add_argument("--parsers-only", action="store_true",
                        help="only time the text parsers on adversarial input (no model)")
    parser.add_argument("--first-image", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", metavar="local|ADDRESS",
                        help="measure the cluster engine's throughput instead (cluster.py): "
                        "images per minute for 1, 2 and 4 replicas up to --replicas")
    parser.add_argument("--replicas", type=_positive, default=2,
                        help="with --cluster: the largest replica count (default 2)")
    parser.add_argument("--load", action="store_true",
                        help="run the load test instead (load.py): many clients at once on a "
                        "loopback studio, page and REST API together")
    parser.add_argument("--clients", type=_positive, default=20,
                        help="with --load: concurrent clients (default 20)")
    parser.add_argument("--requests", type=_positive, default=3,
                        help="with --load: jobs each client sends (default 3)")
    parser.add_argument("--burst", type=_positive, default=4,
                        help="with --cluster: jobs submitted at once per replica (default 4)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        print(json.dumps(line), flush=True)

    if not args.first_image:
        cases = parser_cases()
        emit({"parsers": cases, "budget_s": PARSER_BUDGET_S,
              "all_within_budget": all(case["within_budget"] for case in cases)})
        if args.parsers_only:
            return _write(lines, args.out)

    if args.load:
        from . import load

        load.run(args.clients, args.requests, steps=args.steps or 2, emit=emit)
        return _write(lines, args.out)

    args.steps = args.steps or DEFAULTS["steps"]
    if args.cluster:
        from . import cluster

        model = (args.model or ["tiny-random"])[0]
        size = (args.size or default_sizes(model))[0]
        cluster.run(args.cluster, args.replicas, model, size, args.steps, args.burst, emit)
        return _write(lines, args.out)

    from ..engine import Engine

    with tempfile.TemporaryDirectory(prefix="img2img-bench-") as scratch:
        if args.preview_decoder == "tiny":
            random_tiny_vaes(os.path.join(scratch, "models"))
        engine = Engine(models_dir=os.path.join(scratch, "models"),
                        outputs_dir=os.path.join(scratch, "outputs"), device=args.device,
                        compile=args.compile, cache_dir=args.compile_cache,
                        preview_decoder=args.preview_decoder)
        try:
            on_cuda = engine.device.startswith("cuda")
            models = args.model or [model for model, _ in
                                    (GPU_CASES if on_cuda else CPU_CASES)]
            cases = [(model, size) for model in dict.fromkeys(models)
                     for size in (args.size or default_sizes(model))]
            if args.first_image:
                model, size = cases[0]
                engine_side(engine, model, size, "Euler a", 0.0, args.dtype, DEFAULTS, 1, 0)
                report = {"first_image_at": time.time()}
                if engine.compile_status() is not None:
                    engine.wait_for_compiles(3600)
                    report["compiled_at"] = time.time()
                print(json.dumps(report), flush=True)
                return 0
            emit(environment(engine))
            settings = {"steps": args.steps, "strength": args.strength, "cfg": args.cfg,
                        "draft": args.draft}
            run_cases(engine, cases, args.scheduler or SCHEDULERS, args.pag or PAG_SCALES,
                      settings, args.runs, args.warmup, args.dtype, emit)
            if args.cold:
                for model, size in cases[:1]:
                    emit({"cold": f"{model} {size[0]}x{size[1]}",
                          **cold_starts(model, size, args.device, args.compile)})
        finally:
            engine.cancel_all()
            engine.unload()
    return _write(lines, args.out)


def environment(engine) -> dict:
    import diffusers
    import torch

    env = {"environment": True, "device": engine.device, "python": platform.python_version(),
           "torch": torch.__version__, "diffusers": diffusers.__version__,
           "date": time.strftime("%Y-%m-%d"), "preview_decoder": engine.preview_decoder}
    if engine.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _write(lines: list[dict], out: str | None) -> int:
    if out:
        from pathlib import Path

        from ..files import write_atomic

        write_atomic(Path(out), "".join(json.dumps(line) + "\n" for line in lines).encode(),
                     overwrite=True)
    return 0


__all__ = ["PARSER_BUDGET_S", "PARSER_TEXT_BYTES", "adversarial_texts", "main", "parser_cases"]
