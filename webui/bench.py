"""`python -m webui.bench`: speed and memory of img2img jobs through the real engine, as JSON.

Speed targets are measured here, never in tests. The models are random-weight pipelines in the
real layer shapes (random-sd15, random-sdxl) or the tiny one, so the figures cost no download
and match a real checkpoint's FLOPs. Each case runs a warm-up job (model load, first-call
kernels), then `--runs` timed jobs through Engine.generate with the engine's normal progress
callback and preview, exactly as the studio runs them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time


def _peak_memory(device: str) -> dict:
    if device.startswith("cuda"):
        import torch

        return {"cuda_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "cuda_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    try:
        import resource

        return {"process_peak_rss_gib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    except ImportError:
        return {}


def run_case(engine, model: str, size: int, steps: int, strength: float, scheduler: str,
             dtype: str, runs: int, batch_size: int) -> dict:
    from PIL import Image

    from .params import make

    init = Image.radial_gradient("L").convert("RGB").resize((size, size))
    params = make(model=model, width=size, height=size, steps=steps, strength=strength,
                  scheduler=scheduler, dtype=dtype, seed=1, prompt="a lighthouse at dusk, oil painting",
                  negative_prompt="blurry", batch_size=batch_size)
    started = time.perf_counter()
    engine.generate(params, init, save=False)
    warmup = time.perf_counter() - started
    if engine.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = engine.generate(params, init, save=False)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    effective = result.effective_steps
    return {
        "model": model, "size": f"{size}x{size}", "steps": steps, "strength": strength,
        "effective_steps": effective, "scheduler": scheduler, "dtype": dtype,
        "batch_size": batch_size, "warmup_s": round(warmup, 3),
        "job_s_median": round(median, 4), "job_s_min": round(min(times), 4),
        "steps_per_s": round(effective / median, 2) if median else None,
        "images_per_s": round(batch_size / median, 3) if median else None,
        **_peak_memory(engine.device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append",
                        help="tiny-random, random-sd15, random-sdxl, or any model name/path "
                        "(repeatable; default: tiny-random on the CPU, random-sd15 and "
                        "random-sdxl on CUDA)")
    parser.add_argument("--size", type=int, default=None, help="square size (default: 64 for "
                        "tiny models, 512 for sd15, 1024 for sdxl)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--strength", type=float, default=0.65)
    parser.add_argument("--scheduler", default="Euler a")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    from .engine.core import Engine

    engine = Engine(outputs_dir="outputs", device=args.device)
    models = args.model or (["random-sd15", "random-sdxl"] if engine.device.startswith("cuda")
                            else ["tiny-random"])
    sizes = {"random-sd15": 512, "random-sdxl": 1024}
    report = {"device": engine.device, "python": platform.python_version(), "cases": []}
    try:
        import torch

        report["torch"] = torch.__version__
        if engine.device.startswith("cuda"):
            report["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    for model in models:
        size = args.size or sizes.get(model, 64)
        case = run_case(engine, model, size, args.steps, args.strength, args.scheduler,
                        args.dtype, args.runs, args.batch_size)
        report["cases"].append(case)
        print(json.dumps(case), file=sys.stderr)
        engine.unload()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
