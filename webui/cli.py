"""`python -m webui generate`: one img2img job from the shell, no browser.

Flags mirror GenerationParams (their ranges and defaults come from it); bad input exits with
status 2 and one line saying which flag is wrong and what it accepts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import params as P
from . import schedulers

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _help(field: str) -> str:
    info = P.GenerationParams.model_fields[field]
    lo, hi = P.field_range(field)
    span = f" [{P._num(lo)}..{P._num(hi)}]" if lo is not None else ""
    default = info.default
    shown = "" if default in (None, "") else f" (default {default})"
    return f"{info.description}{span}{shown}"


# flag -> GenerationParams field
FLAGS = {
    "--prompt": "prompt", "--negative-prompt": "negative_prompt", "--strength": "strength",
    "--cfg": "guidance_scale", "--steps": "steps", "--seed": "seed", "--scheduler": "scheduler",
    "--model": "model", "--width": "width", "--height": "height", "--resize-mode": "resize_mode",
    "--batch-size": "batch_size", "--batch-count": "batch_count", "--dtype": "dtype",
}


def add_generate_parser(sub) -> argparse.ArgumentParser:
    gen = sub.add_parser("generate", help="run one img2img job and write PNG(s)",
                         description="Transform an image from the shell; prints the written files "
                         "and their infotext.")
    gen.add_argument("--init", required=True, metavar="IMG", help="the init image")
    for flag, field in FLAGS.items():
        # No argparse type or choices: GenerationParams validates, with one message style.
        gen.add_argument(flag, dest=field, default=None, help=_help(field))
    gen.add_argument("--preset", metavar="NAME", help="start from this preset (shipped or from "
                     "--user-presets); flags given explicitly win over it")
    gen.add_argument("--user-presets", metavar="DIR", default=None,
                     help="user presets folder (default: user-presets)")
    gen.add_argument("--out", metavar="PATH|DIR", help="write here instead of "
                     "outputs/img2img/DATE/: a .png file name (single image) or a folder")
    gen.add_argument("--models-dir", default="models", help="models folder (default: models)")
    gen.add_argument("--outputs-dir", default="outputs", help="outputs folder (default: outputs)")
    gen.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA if present)")
    return gen


def collect_params(args: argparse.Namespace, base: dict | None = None) -> P.GenerationParams:
    """GenerationParams from the flags that were given, over `base` (e.g. a preset)."""
    values = dict(base or {})
    for field in FLAGS.values():
        value = getattr(args, field, None)
        if value is not None:
            values[field] = value
    return P.make(**values)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def preset_base(args: argparse.Namespace, base: dict | None = None
                ) -> tuple[dict | None, argparse.Namespace]:
    """(base values with --preset applied, args to collect over them).

    The preset's template must wrap --prompt rather than be replaced by it, so the wrapped prompt
    goes into the base and --prompt is taken out of the flags that override it.
    """
    name = getattr(args, "preset", None)
    if not name:
        return base, args
    from . import presets

    store = presets.PresetStore(args.user_presets or presets.DEFAULT_USER_DIR)
    preset = store.get(name)
    start = P.make(**(base or {}))
    applied = presets.apply(preset, start, args.prompt if args.prompt is not None else start.prompt)
    return applied.model_dump(), argparse.Namespace(**{**vars(args), "prompt": None})


def run_generate(args: argparse.Namespace, base: dict | None = None) -> int:
    from .engine.core import Engine
    from .engine.errors import InputError, ModelError
    from .presets import PresetError

    try:
        base, args = preset_base(args, base)
    except PresetError as exc:
        return _fail(f"--preset: {exc}")
    except P.ParamsError as exc:
        return _fail(str(exc))
    try:
        params = collect_params(args, base)
    except P.ParamsError as exc:
        flag = next((f for f, name in FLAGS.items() if name == exc.field), exc.field)
        return _fail(f"{flag}: {exc}")
    init = Path(args.init)
    if not init.is_file():
        return _fail(f"--init: no such file: {init}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() == ".png" and params.images_per_job > 1:
        return _fail(f"--out: {params.images_per_job} images need a folder, not a file name")
    engine = Engine(models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                    model=params.model, device=args.device)
    if engine.is_tiny(params.model):
        print("note: using the built-in tiny-random model, which only makes noise. Put a "
              ".safetensors checkpoint in models/Stable-diffusion/ or pass --model.",
              file=sys.stderr)
    try:
        result = engine.generate(params, init, save=out is None)
    except (InputError, P.ParamsError) as exc:
        # Name the flag, as for the settings above: --init for the init image.
        field = getattr(exc, "field", "")
        flag = "--init" if field == "init_image" else next(
            (f for f, name in FLAGS.items() if name == field), "")
        return _fail(f"{flag}: {exc}" if flag else str(exc))
    except ModelError as exc:
        return _fail(str(exc), EXIT_FAILED)
    from .engine import outputs

    for item in result.images:
        path = item.path
        if out is not None:
            data = outputs.png_bytes(item.image, item.infotext)
            if out.suffix.lower() == ".png":
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f".{out.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(out)
                path = out
            else:
                out.mkdir(parents=True, exist_ok=True)
                path = outputs.write_png(data, out, item.seed)
        print(path)
        print(item.infotext)
        print()
    if result.notice:
        print(f"note: {result.notice}", file=sys.stderr)
    print(f"effective steps: {result.effective_steps} (steps x strength), "
          f"seed: {result.seed}, {result.elapsed:.1f} s", file=sys.stderr)
    return 0


def run_import_styles(args: argparse.Namespace) -> int:
    """`import-styles FILE`: styles.csv rows from other SD tools become user presets."""
    from . import presets

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _fail(f"{path}: cannot be read ({exc.strerror})")
    store = presets.PresetStore(args.user_presets or presets.DEFAULT_USER_DIR)
    try:
        report = presets.import_styles(data, store, file=path.name, on_conflict=args.on_conflict)
    except presets.PresetError as exc:
        return _fail(str(exc))
    for preset in report.imported:
        print(f"imported: {preset.name} -> {preset.path}")
    for name, reason in report.skipped:
        print(f"skipped: {name}: {reason}", file=sys.stderr)
    print(f"{len(report.imported)} imported, {len(report.skipped)} skipped", file=sys.stderr)
    return 0


def list_schedulers() -> str:
    return ", ".join(schedulers.all_names())

