"""`python -m webui.bench`: speed and memory of img2img jobs through the real engine, as JSON.

Speed targets are measured here, never in tests. The models are random-weight pipelines in the
real layer shapes (random-sd15, random-sdxl) or the tiny one, so the figures cost no download
and match a real checkpoint's FLOPs. Each case runs a warm-up job (model load, first-call
kernels), then `--runs` timed jobs through Engine.generate with the engine's normal progress
callback and preview, exactly as the studio runs them.

The text parsers (infotext, prompt syntax) are timed too, on 1 MB of adversarial text each
(`--parsers-only` for those alone): a parser that backtracks would stall the whole server.
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


# Text parsers run on whatever a client sends; each must stay linear on hostile input. The
# texts are 1 MB (ten times what any field accepts), each built to defeat one kind of parser.
PARSER_TEXT_BYTES = 1_000_000
PARSER_BUDGET_S = 1.0


def adversarial_texts(size: int = PARSER_TEXT_BYTES) -> dict[str, str]:
    """Named hostile texts of about `size` characters."""
    return {
        "words without colons": ("lorem ipsum " * size)[:size],
        "commas then a colon": "," * size + ": x",
        "colons only": ":" * size,
        "unclosed quotes": ('k:"' * size)[:size],
        "key characters": "Steps: 1, Sampler: Euler, CFG scale: 7, " + "(" * size + ":",
        "lora tags": ("<lora:" * size)[:size],
        "brackets": ("((([[[" * size)[:size],
        "escapes": ("\\(" * size)[:size],
        "BREAK words": ("BREAK " * size)[:size],
    }


def parser_cases(budget: float = PARSER_BUDGET_S) -> list[dict]:
    """Seconds each text parser takes on each adversarial text, against the budget."""
    from . import infotext, prompts
    from .engine import parse_prompt_loras

    parsers = {
        "prompt syntax": prompts.parse,
        "<lora:...> tags": parse_prompt_loras,
        # The settings-line scanner sees the whole text; parse() refuses more than MAX_CHARS
        # at once, so it is timed on text cut to that length.
        "infotext settings scanner": infotext._pairs,
        "infotext.parse": lambda text: infotext.parse(text[:infotext.MAX_CHARS]),
    }
    cases = []
    for parser, parse in parsers.items():
        for name, text in adversarial_texts().items():
            t0 = time.perf_counter()
            try:
                parse(text)
            except ValueError:
                pass  # a refusal is an answer too; the time to reach it is what counts
            seconds = time.perf_counter() - t0
            cases.append({"parser": parser, "text": name, "chars": len(text),
                          "seconds": round(seconds, 4), "budget_s": budget,
                          "within_budget": seconds <= budget})
    return cases


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
    parser.add_argument("--parsers-only", action="store_true",
                        help="only time the text parsers on adversarial input (no model)")
    args = parser.parse_args(argv)
    parsers = parser_cases()
    if args.parsers_only:
        return _report({"parsers": parsers}, args.out)

    from .engine import Engine

    engine = Engine(outputs_dir="outputs", device=args.device)
    models = args.model or (["random-sd15", "random-sdxl"] if engine.device.startswith("cuda")
                            else ["tiny-random"])
    sizes = {"random-sd15": 512, "random-sdxl": 1024}
    report = {"device": engine.device, "python": platform.python_version(), "cases": [],
              "parsers": parsers}
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
    return _report(report, args.out)


def _report(report: dict, out: str | None) -> int:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
