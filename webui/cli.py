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
from .engine import LORA_HOT_RANK, LORA_RANK_HELP, check_lora_rank

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
    "--attention-slicing": "attention_slicing", "--vae-tiling": "vae_tiling",
    "--cpu-offload": "cpu_offload", "--ip-adapter": "ip_adapter", "--ip-scale": "ip_adapter_scale",
    "--pag-scale": "pag_scale", "--draft": "draft", "--mask-blur": "mask_blur",
    "--inpaint-area": "inpaint_area", "--inpaint-padding": "inpaint_padding",
    "--masked-content": "masked_content", "--output-type": "output_type",
    "--color-correction": "color_correction",
}
# AdapterError.field -> the flag that brought that input.
ADAPTER_FLAGS = {"lora": "--lora", "controlnet": "--controlnet", "ip_adapter": "--ip-adapter",
                 "mask": "--mask", "latents": "--latents", "image": "--init",
                 "pag": "--pag-scale", "mask_blur": "--mask-blur", "padding": "--inpaint-padding"}
# Flags that build the list-valued settings.
LIST_FLAGS = {"loras": "--lora", "controlnets": "--controlnet"}
CONTROL_FLAGS = {"--control-preprocessor": "preprocessor", "--control-detector": "detector",
                 "--control-scale": "scale", "--control-start": "start", "--control-end": "end",
                 "--canny-low": "low", "--canny-high": "high"}


def add_generate_parser(sub) -> argparse.ArgumentParser:
    gen = sub.add_parser("generate", help="run one img2img job and write PNG(s)",
                         description="Transform an image from the shell; prints the written files "
                         "and their infotext.")
    add_job_flags(gen, "write here instead of outputs/img2img/DATE/: a .png file name (single "
                  "image) or a folder")
    return gen


def add_job_flags(gen: argparse.ArgumentParser, out_help: str, skip: tuple[str, ...] = ()
                  ) -> None:
    """The flags of one job's settings, pictures and folders (generate's, shared by xy); `skip`:
    settings fields the command fixes itself."""
    gen.add_argument("--init", metavar="IMG", help="the init image (required unless --latents)")
    for flag, field in FLAGS.items():
        if field in skip:
            continue
        # No argparse type or choices: GenerationParams validates, with one message style.
        gen.add_argument(flag, dest=field, default=None, help=_help(field))
    gen.add_argument("--lora", dest="lora", action="append", metavar="NAME[:WEIGHT]",
                     help="a LoRA from models/Lora (repeatable; weight {}..{}, default 1)".format(
                         *(P._num(v) for v in P.field_range("weight", P.LoraWeight))))
    gen.add_argument("--controlnet", dest="controlnet", action="append", metavar="MODEL",
                     help="a ControlNet model folder or .safetensors (repeatable, at most 3)")
    gen.add_argument("--control-image", dest="control_image", action="append", metavar="IMG",
                     help="control picture for the ControlNets in order (default: the init image)")
    for flag, key in CONTROL_FLAGS.items():
        if key == "preprocessor":
            span = f" ({', '.join(P.choices(key, P.ControlNetUnit))})"
        elif key == "detector":
            span = ""
        else:
            span = " [{}..{}]".format(*(P._num(v) for v in P.field_range(key, P.ControlNetUnit)))
        gen.add_argument(flag, dest=f"control_{key}", default=None,
                         help=P.ControlNetUnit.model_fields[key].description + span)
    gen.add_argument("--ip-image", metavar="IMG", help="IP-Adapter reference image")
    gen.add_argument("--mask", metavar="IMG", help="inpaint mask (white = repaint)")
    gen.add_argument("--latents", metavar="FILE", help="start from a latent .safetensors file "
                     "written with --output-type latent")
    gen.add_argument("--preset", metavar="NAME", help="start from this preset (shipped or from "
                     "--user-presets); flags given explicitly win over it")
    gen.add_argument("--user-presets", metavar="DIR", default=None,
                     help="user presets folder (default: user-presets)")
    gen.add_argument("--out", metavar="PATH|DIR", help=out_help)
    gen.add_argument("--models-dir", default="models", help="models folder (default: models)")
    gen.add_argument("--outputs-dir", default="outputs", help="outputs folder (default: outputs)")
    gen.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA if present)")
    gen.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                     help="compiled UNet and VAE: auto is on for CUDA, off on the CPU "
                     "(default auto)")
    gen.add_argument("--lora-rank", default=LORA_HOT_RANK, help=LORA_RANK_HELP)


def collect_params(args: argparse.Namespace, base: dict | None = None) -> P.GenerationParams:
    """GenerationParams from the flags that were given, over `base` (e.g. a preset)."""
    values = dict(base or {})
    for field in FLAGS.values():
        value = getattr(args, field, None)
        if value is not None:
            values[field] = value
    if getattr(args, "lora", None):
        values["loras"] = []
        for item in args.lora:
            name, sep, weight = item.rpartition(":")
            values["loras"].append({"name": name, "weight": weight} if sep and name
                                   else {"name": item})
    if getattr(args, "controlnet", None):
        shared = {key: getattr(args, f"control_{key}") for key in CONTROL_FLAGS.values()
                  if getattr(args, f"control_{key}", None) is not None}
        images = getattr(args, "control_image", None) or []
        values["controlnets"] = [
            {"model": model, "source": "upload" if i < len(images) else "init image", **shared}
            for i, model in enumerate(args.controlnet)]
    return P.make(**values)


def flag_for(field: str) -> str:
    """The flag behind a (possibly nested) settings field, for error messages."""
    root = field.split("[", 1)[0].split(".", 1)[0]
    leaf = field.rsplit(".", 1)[-1] if "]." in field else ""
    if root == "controlnets" and leaf in CONTROL_FLAGS.values():
        return next(flag for flag, key in CONTROL_FLAGS.items() if key == leaf)
    if root in LIST_FLAGS:
        return LIST_FLAGS[root]
    return next((f for f, name in FLAGS.items() if name == field), field)


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


def _missing_file(args: argparse.Namespace) -> str | None:
    """The error for a named picture or file that is not there, or for no picture at all."""
    files = {"--init": args.init, "--ip-image": args.ip_image, "--mask": args.mask,
             "--latents": args.latents}
    for i, image in enumerate(args.control_image or []):
        files[f"--control-image #{i + 1}"] = image
    for flag, value in files.items():
        if value is not None and not Path(value).is_file():
            return f"{flag}: no such file: {value}"
    if args.init is None and args.latents is None:
        return "--init: an init image is required (or --latents)"
    return None


def _engine(args: argparse.Namespace, params: P.GenerationParams):
    from .engine import Engine, Limits

    # The machine's own user, not sharing the GPU: only the settings' own ranges apply.
    engine = Engine(models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                    model=params.model, device=args.device,
                    compile=getattr(args, "compile", "auto"), limits=Limits.unlimited(),
                    lora_rank=getattr(args, "lora_rank", LORA_HOT_RANK))
    if engine.is_tiny(params.model):
        print("note: using the built-in tiny-random model, which only makes noise. Put a "
              ".safetensors checkpoint in models/Stable-diffusion/ or pass --model.",
              file=sys.stderr)
    return engine


def _job_failure(exc: Exception, where: str = "") -> int:
    """The exit for a job's error: bad input (2) names the flag that brought it; a model that
    cannot run, or a lack of memory, is a failure (1), said with `where` it happened."""
    from .engine import AdapterError, InputError

    if isinstance(exc, AdapterError):
        # A LoRA name, mask or ControlNet input the artist gave: bad input, not a broken model.
        # Before InputError, which it is too: its fields name the adapter flags.
        flag = ADAPTER_FLAGS.get(exc.field)
        return _fail(f"{flag}: {exc}" if flag else str(exc))
    if isinstance(exc, (InputError, P.ParamsError)):
        # Name the flag, as for the settings above: --init for the init image.
        field = getattr(exc, "field", "")
        flag = {"init_image": "--init", "mask": "--mask", "ip_adapter_image": "--ip-image",
                "latents": "--latents"}.get(field) or (flag_for(field) if field else "")
        return _fail(f"{flag}: {exc}" if flag and flag != field else str(exc))
    return _fail(f"{where}: {exc}" if where else str(exc), EXIT_FAILED)


def _job_settings(args: argparse.Namespace, base: dict | None, fixed: dict | None = None):
    """(params, args) for a job from the command line (preset, flags, then `fixed`), with the
    named files checked; or the exit status, after a message naming the flag."""
    from .presets import PresetError

    try:
        base, args = preset_base(args, base)
    except PresetError as exc:
        return _fail(f"--preset: {exc}")
    except P.ParamsError as exc:
        return _fail(str(exc))
    try:
        params = collect_params(args, base).replace(**(fixed or {}))
    except P.ParamsError as exc:
        return _fail(f"{flag_for(exc.field)}: {exc}")
    missing = _missing_file(args)
    if missing:
        return _fail(missing)
    if hasattr(args, "lora_rank"):
        try:
            args = argparse.Namespace(**{**vars(args),
                                         "lora_rank": check_lora_rank(args.lora_rank)})
        except ValueError as exc:
            return _fail(f"--lora-rank: {exc}")
    return params, args


def run_generate(args: argparse.Namespace, base: dict | None = None) -> int:
    from .engine import InputError, JobRequest, ModelError, OutOfMemory

    settings = _job_settings(args, base)
    if isinstance(settings, int):
        return settings
    params, args = settings
    init = Path(args.init) if args.init else None
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() == ".png" and (
            params.images_per_job > 1 or params.output_type == "latent"):
        return _fail("--out: more than one image, or latent output, needs a folder, not a "
                     "file name")
    # The command line is the machine's own user: files may be named anywhere (allow_paths).
    request = JobRequest(params, init, ip_image=args.ip_image, mask=args.mask,
                         latents=args.latents,
                         control_images=list(args.control_image or []) or None,
                         save=out is None, allow_paths=True)
    engine = _engine(args, params)
    try:
        # A name that is no model is bad input (2), said before the job, naming the flag; a
        # model that is found but fails to load stays a failure (1).
        engine.check_model(params.model or "")
    except ModelError as exc:
        return _fail(f"--model: {exc}")
    try:
        result = engine.generate(request)
    except (InputError, P.ParamsError, ModelError, OutOfMemory) as exc:
        return _job_failure(exc)
    from . import files
    from .engine import png_bytes, write_numbered

    for item in result.images:
        path = item.path
        if out is not None and item.latents is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = engine.write_latents(item, out)
        elif out is not None:
            data = png_bytes(item.image, item.infotext)
            if out.suffix.lower() == ".png":
                files.write_atomic(out, data, overwrite=True)
                path = out
            else:
                out.mkdir(parents=True, exist_ok=True)
                path = write_numbered(data, out, item.seed)
        print(path if path is not None else "(not saved)")
        print(item.infotext)
        print()
    if result.notice:
        print(f"note: {result.notice}", file=sys.stderr)
    print(f"effective steps: {result.effective_steps} (steps x strength), "
          f"seed: {result.seed}, {result.elapsed:.1f} s", file=sys.stderr)
    # Asked for files and got none (a full disk, an unwritable outputs folder): a failure.
    unsaved = out is None and not result.interrupted and any(
        item.path is None for item in result.images)
    return 1 if unsaved else 0


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



# -- xy: an X/Y(/Z) plot -------------------------------------------------------------------------
# xyplot.AxisError.field -> the option that brought it.
AXIS_FLAGS = {f"{which} {part}": f"--{which.lower()}-{part}" for which in "XYZ"
              for part in ("axis", "values")}
# A grid cell is one picture: the plot fixes these settings itself.
XY_FIXED = {"batch_size": 1, "batch_count": 1, "output_type": "image"}
# Without a Y axis the plot is one row, labelled with the first of these the other axes leave.
ONE_ROW = ("CFG scale", "Steps", "Denoising strength")


def add_xy_parser(sub) -> argparse.ArgumentParser:
    from . import xyplot

    plot = sub.add_parser("xy", help="run an X/Y(/Z) plot and write its grid PNG(s)",
                          description="The same picture and seed over a grid of settings, as the "
                          "studio's X/Y plot tab makes it; prints the written grids. Each grid "
                          "PNG holds its settings and every cell's infotext.")
    axes = ", ".join(xyplot.AXES)
    for which in "xyz":
        name = which.upper()
        what = {"x": "the setting that changes across the columns",
                "y": "the setting that changes down the rows (default: none, one row)",
                "z": "a third setting: one grid per value (default: none)"}[which]
        plot.add_argument(f"--{which}-axis", metavar="AXIS", default=None,
                          help=f"{what}; one of: {axes}")
        plot.add_argument(f"--{which}-values", metavar="V1,V2,...", default=None,
                          help=f"the {name} axis's values, separated by commas (quote a value "
                          "holding a comma); for Prompt S/R the first is the text replaced")
    add_job_flags(plot, "write here instead of outputs/img2img-grids/DATE/: a .png file name "
                  "(one grid) or a folder", skip=tuple(XY_FIXED))
    return plot


def _axis_label(text: str | None) -> str | None:
    """An axis as the command line may spell it (any case) as xyplot names it."""
    from . import xyplot

    if text is None:
        return None
    return next((label for label in [*xyplot.AXES, xyplot.NOTHING]
                 if label.casefold() == text.strip().casefold()), text)


def _axes(args: argparse.Namespace, params: P.GenerationParams):
    """The plan from the axis options; xyplot.AxisError naming the option at fault."""
    from . import xyplot

    x_axis, y_axis, z_axis = (_axis_label(getattr(args, f"{w}_axis")) for w in "xyz")
    listed = ", ".join(xyplot.AXES)
    if x_axis is None:
        raise xyplot.AxisError("X axis", f"X axis: name the setting to vary across the columns, "
                               f"one of: {listed}")
    for which, axis in (("y", y_axis), ("z", z_axis)):
        if axis is None and getattr(args, f"{which}_values") is not None:
            raise xyplot.AxisError(f"{which.upper()} axis", f"{which.upper()} axis: name the "
                                   f"setting --{which}-values are for, one of: {listed}")
    y_values = args.y_values
    if y_axis is None:
        y_axis = next(label for label in ONE_ROW if label not in (x_axis, z_axis))
        y_values = xyplot.value_label(getattr(params, xyplot.AXES[y_axis]))
    return xyplot.plan(x_axis, args.x_values or "", y_axis, y_values or "", params,
                       z_axis or xyplot.NOTHING, args.z_values or "")


def run_xy(args: argparse.Namespace, base: dict | None = None) -> int:
    """`xy`: a plot headless, with the same flags as generate plus the axes; prints the grid
    files written. Bad input exits 2 before any cell runs."""
    from . import files, xyplot
    from .engine import JobRequest

    settings = _job_settings(args, base, XY_FIXED)
    if isinstance(settings, int):
        return settings
    params, args = settings
    try:
        grid_plan = _axes(args, params)
    except xyplot.AxisError as exc:
        return _fail(f"{AXIS_FLAGS[exc.field]}: {exc}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() == ".png" and grid_plan.grids > 1:
        return _fail("--out: a Z axis makes one grid per value, which needs a folder, not a "
                     "file name")
    # The command line is the machine's own user: files may be named anywhere (allow_paths).
    request = JobRequest(params, Path(args.init) if args.init else None, ip_image=args.ip_image,
                         mask=args.mask, latents=args.latents,
                         control_images=list(args.control_image or []) or None, save=False,
                         allow_paths=True)
    engine = _engine(args, params)
    finished = None
    try:
        for event in xyplot.run(engine, grid_plan, request):
            if isinstance(event, xyplot.Started):
                print(event.text, file=sys.stderr)
            elif isinstance(event, xyplot.CellDone):
                print(f"{event.where}: done", file=sys.stderr)
            elif isinstance(event, xyplot.Finished):
                finished = event
    except xyplot.CellFailed as exc:
        return _job_failure(exc.error, exc.where)
    if finished is None or finished.interrupted:
        return _fail(f"{grid_plan.name} interrupted: no grid written", EXIT_FAILED)
    if out is not None and out.suffix.lower() == ".png":
        files.write_atomic(out, finished.grids[0].png(), overwrite=True)
        paths = [out]
    else:
        paths = xyplot.save(finished.grids, engine.outputs_dir, folder=out)
    for path in paths:
        print(path)
    print(f"{grid_plan.name}: {finished.summary}", file=sys.stderr)
    return 0
