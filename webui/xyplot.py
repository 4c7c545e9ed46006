"""X/Y(/Z) plot: one picture over a grid of settings, the same seed in every cell.

Artists learn what denoising strength and CFG do from a table of examples; this renders that table
for their own picture. A third (Z) axis makes one grid per value. Values are validated through
GenerationParams, so a bad cell fails before any GPU time is spent, with a message naming the axis.

Every front door plots the same way: the studio's tab, `python -m webui xy` and an API client all
parse their axes here, run the cells through an engine's public interface (`run`) and save the
grids (`save`). Neither gradio nor torch is imported, so a headless plot loads no web stack and
the studio loads no pipeline stack.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from . import infotext
from .engine import (Cancelled, EngineAPI, JobHandle, JobRequest, Progress, Result, day_folder,
                     write_numbered)
from .params import MAX_SEED, GenerationParams, ParamsError

# Axis label -> what it changes: a GenerationParams field, or one of the kinds handled in
# _apply (a prompt search/replace, the first LoRA's weight, the first ControlNet's scale). The
# first two are the default pair.
AXES: dict[str, str] = {
    "Denoising strength": "strength",
    "CFG scale": "guidance_scale",
    "Steps": "steps",
    "Sampler": "scheduler",
    "Seed": "seed",
    "Prompt S/R": "prompt_sr",
    "LoRA weight": "lora_weight",
    "ControlNet weight": "controlnet_scale",
    "PAG scale": "pag_scale",
    "Draft": "draft",
}
# The Z axis may be left off; then the plot is one X/Y grid.
NOTHING = "Nothing"
# Typical values of each axis, the guide's usual comparison points, for the message that asks
# for values (a front door may also start a freshly picked axis with them).
EXAMPLES: dict[str, str] = {
    "strength": "0.3, 0.5, 0.7",
    "guidance_scale": "5, 7, 10",
    "steps": "10, 20, 30",
    "scheduler": "Euler a, DPM++ 2M Karras, DDIM",
    "seed": "1, 2, 3",
    "prompt_sr": "red, blue, \"deep green\" (the first is searched for in the prompt and each "
                 "value replaces it)",
    "lora_weight": "0, 0.5, 1",
    "controlnet_scale": "0.5, 1, 1.5",
    "pag_scale": "0, 1.5, 3",
    "draft": "0, 1, 2",
}
# Every cell is a full img2img job; beyond this a plot takes too long and reads badly anyway
# (with a Z axis the limit counts the cells of all its grids).
MAX_CELLS = 36
# Cells are shrunk to this size so a 6x6 grid of large pictures stays a sane PNG.
MAX_CELL_SIDE = 512
# Longer labels are cut short in the picture (the cells' infotexts keep them whole).
MAX_LABEL = 40
# The PNG text chunk holding each cell's own infotext (a JSON list, see cell_record).
CELLS_KEY = "xy_cells"
# Saved grids: outputs/img2img-grids/YYYY-MM-DD/NNNNN-SEED.png, beside the single results.
GRIDS_SUBDIR = "img2img-grids"

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
EMPTY_CELL = (200, 200, 200)


class AxisError(ValueError):
    """An axis or its values are unusable; `field` names the input at fault ('X axis',
    'Y values', ...), which each front door maps to its own control or option."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _apply(kind: str, params: GenerationParams, value: Any, search: str = "") -> GenerationParams:
    """`params` with one axis value applied (validated: ParamsError on a bad value)."""
    if kind == "prompt_sr":
        return params.replace(prompt=params.prompt.replace(search, value))
    if kind == "lora_weight":
        loras = [lora.model_dump() for lora in params.loras]
        loras[0]["weight"] = value
        return params.replace(loras=loras)
    if kind == "controlnet_scale":
        units = [unit.model_dump() for unit in params.controlnets]
        units[0]["scale"] = value
        return params.replace(controlnets=units)
    return params.replace(**{kind: value})


def _applied(kind: str, params: GenerationParams) -> Any:
    """The value an axis of `kind` set in `params`, as validation normalised it."""
    if kind == "lora_weight":
        return params.loras[0].weight
    if kind == "controlnet_scale":
        return params.controlnets[0].scale
    if kind == "prompt_sr":
        return params.prompt
    return getattr(params, kind)


@dataclass
class Axis:
    label: str  # as picked on the page, a key of AXES
    values: list[Any]
    which: str = "X"
    search: str = ""  # Prompt S/R: the text each value replaces
    target: str = ""  # what the axis changes when that is not obvious (the LoRA's name, ...)

    @property
    def kind(self) -> str:
        return AXES[self.label]

    @property
    def title(self) -> str:
        return f"{self.label} ({self.target})" if self.target else self.label

    @property
    def labels(self) -> list[str]:
        return [value_label(v) for v in self.values]

    def apply(self, params: GenerationParams, index: int) -> GenerationParams:
        return _apply(self.kind, params, self.values[index], self.search)

    def describe(self) -> str:
        return f"{self.title} ({', '.join(map(_typed, self.labels))})"


@dataclass
class Plan:
    x: Axis
    y: Axis
    z: Axis | None = None

    # Shorthands for the X and Y axes, as callers of the two-axis plan knew them.
    @property
    def x_axis(self) -> str:
        return self.x.title

    @property
    def y_axis(self) -> str:
        return self.y.title

    @property
    def x_values(self) -> list[Any]:
        return self.x.values

    @property
    def y_values(self) -> list[Any]:
        return self.y.values

    @property
    def axes(self) -> list[Axis]:
        return [self.x, self.y] + ([self.z] if self.z else [])

    @property
    def grids(self) -> int:
        return len(self.z.values) if self.z else 1

    @property
    def cells(self) -> int:
        return len(self.x.values) * len(self.y.values) * self.grids

    @property
    def name(self) -> str:
        return "X/Y/Z plot" if self.z else "X/Y plot"

    def uses(self, kind: str) -> bool:
        return any(axis.kind == kind for axis in self.axes)

    def grid_params(self, base: GenerationParams, zi: int = 0) -> GenerationParams:
        """The settings one grid shares: the base with its Z value applied."""
        return self.z.apply(base, zi) if self.z else base

    def params_for(self, base: GenerationParams, xi: int, yi: int, zi: int = 0
                   ) -> GenerationParams:
        return self.y.apply(self.x.apply(self.grid_params(base, zi), xi), yi)

    def describe(self) -> str:
        """What the plot compares, for a grid's infotext: 'Steps (10, 20) x CFG scale (5, 7)'."""
        return " x ".join(axis.describe() for axis in self.axes)

    def where(self, done: int, xi: int, yi: int, zi: int = 0) -> str:
        """The status of the next cell: 'Cell 3/4 (Steps 10, CFG scale 7)'."""
        parts = [f"{self.x.title} {self.x.labels[xi]}", f"{self.y.title} {self.y.labels[yi]}"]
        if self.z:
            parts.append(f"{self.z.title} {self.z.labels[zi]}")
        return f"Cell {done + 1}/{self.cells} ({', '.join(parts)})"

    def extra(self, zi: int | None = None) -> dict[str, str]:
        """The keys a grid's infotext adds: the X/Y description and, for one grid of a Z axis,
        its Z value."""
        pairs = {"X/Y plot": f"{self.x.describe()} x {self.y.describe()}"}
        if self.z:
            pairs["Z axis"] = (self.z.describe() if zi is None
                               else f"{self.z.title}: {self.z.labels[zi]}")
        return pairs


def _typed(label: str) -> str:
    """A value as it would be typed back into the axis (quoted when it holds a comma)."""
    if any(c in label for c in ',"\n') or label != label.strip():
        return '"' + label.replace('"', '""') + '"'
    return label


def split_values(text: str) -> list[str]:
    """The comma-separated items of an axis, read as CSV so that a value holding a comma can be
    quoted ("red, white", blue); blank items are dropped."""
    rows = csv.reader(io.StringIO((text or "").replace("\r", "")), skipinitialspace=True)
    return [item.strip() for row in rows for item in row if item.strip()]


def parse_axis(axis: str, text: str, base: GenerationParams, which: str = "X") -> Axis:
    """The validated values of one axis, in the order typed, duplicates dropped."""
    if axis not in AXES:
        raise AxisError(f"{which} axis", f"{which} axis must be one of: {', '.join(AXES)} "
                        f"(got {axis!r})")
    kind = AXES[axis]
    try:
        items = split_values(text)
    except csv.Error as exc:
        raise AxisError(f"{which} values", f"{which} values ({axis}): {exc}") from None
    if not items:
        raise AxisError(f"{which} values", f"{which} values: type {axis} values separated by "
                        f"commas, e.g. {EXAMPLES[kind]}")
    result = Axis(axis, [], which)
    if kind == "prompt_sr":
        result.search = result.target = items[0]
        if items[0] not in base.prompt:
            raise AxisError(f"{which} values", f"{which} values (Prompt S/R): {items[0]!r} is not "
                            "in the prompt; the first value is the text to search for, and each "
                            "value (the first too) replaces it")
    elif kind == "lora_weight":
        if not base.loras:
            raise AxisError(f"{which} axis", f"{which} axis (LoRA weight): no LoRA is picked; "
                            "pick one under Adapters (the axis sets the first one's weight)")
        result.target = base.loras[0].name
    elif kind == "controlnet_scale":
        if not base.controlnets:
            raise AxisError(f"{which} axis", f"{which} axis (ControlNet weight): no ControlNet "
                            "unit is enabled; enable one (the axis sets the first enabled "
                            "unit's scale)")
        result.target = base.controlnets[0].model.rsplit("/", 1)[-1]
    for item in items:
        try:
            value = _applied(kind, _apply(kind, base, item, result.search))
        except ParamsError as exc:
            message = str(exc)
            if "[" in exc.field and message.startswith(exc.field):
                # 'loras[0].weight must be ...': the axis already says which setting it is.
                message = message[len(exc.field):].lstrip(": ")
            raise AxisError(f"{which} values", f"{which} values ({axis}): {message}") from None
        if kind == "prompt_sr":
            value = item
        if kind == "seed" and value < 0:
            raise AxisError(f"{which} values", f"{which} values (Seed): -1 (a random seed) has "
                            "no place on a seed axis; type the seeds to compare")
        if value not in result.values:
            result.values.append(value)
    return result


def plan(x_axis: str, x_text: str, y_axis: str, y_text: str, base: GenerationParams,
         z_axis: str | None = NOTHING, z_text: str = "") -> Plan:
    """The axes parsed, every cell's settings validated and the plot's size checked; AxisError
    on any problem."""
    xs = parse_axis(x_axis, x_text, base, "X")
    ys = parse_axis(y_axis, y_text, base, "Y")
    if x_axis == y_axis:
        raise AxisError("Y axis", f"X and Y are both {x_axis}: pick two different settings")
    zs = None
    if z_axis not in (None, "", NOTHING):
        zs = parse_axis(z_axis, z_text, base, "Z")
        if z_axis in (x_axis, y_axis):
            other = "X" if z_axis == x_axis else "Y"
            raise AxisError("Z axis", f"{other} and Z are both {z_axis}: pick a different "
                            f"setting for Z (or {NOTHING})")
    result = Plan(xs, ys, zs)
    if result.cells > MAX_CELLS:
        sizes = " x ".join(str(len(axis.values)) for axis in result.axes)
        raise AxisError("X values", f"{sizes} = {result.cells} cells is too many: an X/Y plot "
                        f"has at most {MAX_CELLS} cells; use fewer values")
    # Values that pass alone may still clash together (two replacements making a prompt too
    # long): every cell is checked before the first one runs.
    for zi in range(result.grids):
        for yi in range(len(ys.values)):
            for xi in range(len(xs.values)):
                try:
                    result.params_for(base, xi, yi, zi)
                except ParamsError as exc:
                    where = f"{xs.labels[xi]} x {ys.labels[yi]}"
                    raise AxisError("X values", f"The cell {where}: {exc}") from None
    return result


def value_label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class Grid:
    image: Image.Image
    labels: list[str] = field(default_factory=list)  # column values, then row values
    titles: tuple[str, str] = ("", "")  # the X and Y axis names
    title: str = ""  # the heading over the whole grid (its Z value)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        # Without FreeType only the fixed bitmap font exists.
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render(cells: list[list[Image.Image | None]], x_axis: str, x_values: list[Any],
           y_axis: str, y_values: list[Any], title: str = "") -> Grid:
    """One labelled image: cells[row][col] with row = Y value and column = X value.

    The X axis name runs over the columns with each column's value under it; the Y axis name sits
    in the corner with each row's value beside its row. Columns widen to fit their value, so long
    sampler names stay readable next to small pictures (a long prompt replacement is cut short:
    the cell's infotext has it whole). `title` (a Z value) heads the grid. Missing cells (an
    interrupted plot) are drawn grey, so the table keeps its shape.
    """
    present = [img for row in cells for img in row if img is not None]
    if present:
        iw = max(img.width for img in present)
        ih = max(img.height for img in present)
        scale = min(1.0, MAX_CELL_SIDE / max(iw, ih))
        iw, ih = max(1, int(iw * scale)), max(1, int(ih * scale))
    else:
        iw = ih = 64
    font = _font(max(14, min(iw, ih) // 14))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_labels = [_short(value_label(v)) for v in x_values]
    row_labels = [_short(value_label(v)) for v in y_values]
    x_axis, y_axis, title = _short(x_axis), _short(y_axis), _short(title, 2 * MAX_LABEL)
    texts = col_labels + row_labels + [x_axis, y_axis] + ([title] if title else [])
    line_h = max(_text_size(probe, text, font)[1] for text in texts)
    pad = max(4, line_h // 2)
    widest_col = max(_text_size(probe, text, font)[0] for text in col_labels)
    cw, ch = max(iw, widest_col + 2 * pad), ih
    left = max(_text_size(probe, text, font)[0] for text in row_labels + [y_axis]) + 2 * pad
    head = (line_h + pad) if title else 0
    top = head + 2 * (line_h + pad) + pad
    grid_w = cw * len(x_values)
    # The axis name (and the title) must fit, however few and narrow the columns are.
    width = left + max(grid_w, _text_size(probe, x_axis, font)[0] + 2 * pad)
    if title:
        width = max(width, _text_size(probe, title, font)[0] + 2 * pad)

    image = Image.new("RGB", (width, top + ch * len(y_values)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, pad), title, fill=INK, font=font)
    title_w, _ = _text_size(draw, x_axis, font)
    draw.text((left + max(0, (grid_w - title_w) // 2), head + pad), x_axis, fill=INK, font=font)
    value_y = head + pad + line_h + pad
    draw.text((pad, value_y), y_axis, fill=INK, font=font)
    for xi, text in enumerate(col_labels):
        tw, _ = _text_size(draw, text, font)
        draw.text((left + xi * cw + (cw - tw) // 2, value_y), text, fill=INK, font=font)
    for yi, text in enumerate(row_labels):
        tw, _ = _text_size(draw, text, font)
        draw.text((left - pad - tw, top + yi * ch + (ch - line_h) // 2), text, fill=INK,
                  font=font)
    for yi, row in enumerate(cells):
        for xi, cell in enumerate(row):
            x0, y0 = left + xi * cw + (cw - iw) // 2, top + yi * ch
            if cell is None:
                draw.rectangle([(x0, y0), (x0 + iw - 1, y0 + ih - 1)], fill=EMPTY_CELL,
                               outline=BACKGROUND)
                continue
            if cell.size != (iw, ih):
                cell = cell.resize((iw, ih), Image.Resampling.LANCZOS)
            image.paste(cell.convert("RGB"), (x0, y0))
    return Grid(image, col_labels + row_labels, (x_axis, y_axis), title)


def stack(images: list[Image.Image]) -> Image.Image:
    """The grids of a Z axis one under the other, for the page to show as one picture (each is
    also saved on its own)."""
    if len(images) == 1:
        return images[0]
    gap = 24
    width = max(image.width for image in images)
    height = sum(image.height for image in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), BACKGROUND)
    y = 0
    for image in images:
        out.paste(image.convert("RGB"), (0, y))
        y += image.height + gap
        if y < height:
            ImageDraw.Draw(out).line([(0, y - gap // 2), (width, y - gap // 2)], fill=EMPTY_CELL,
                                     width=2)
    return out


# -- the saved grid's text chunks ----------------------------------------------------------------
def cell_record(plan: Plan, xi: int, yi: int, zi: int, infotext: str) -> dict[str, str]:
    """One cell's entry in the CELLS_KEY chunk: where it sits (the labels) and its infotext."""
    record = {"x": plan.x.labels[xi], "y": plan.y.labels[yi]}
    if plan.z:
        record["z"] = plan.z.labels[zi]
    record["parameters"] = infotext
    return record


def attach(image: Image.Image, parameters: str, cells: list[dict[str, str]]) -> Image.Image:
    """`image` with the grid's infotext and its cells' infotexts in its info, so that the page's
    copy (gradio writes str info entries as PNG text) carries them like the saved file."""
    image.info["parameters"] = parameters
    image.info[CELLS_KEY] = json.dumps(cells, ensure_ascii=False)
    return image


def png_bytes(image: Image.Image, parameters: str, cells: list[dict[str, str]]) -> bytes:
    """A grid PNG: `parameters` (what tools read: the base settings and the X/Y/Z description)
    and, compressed, the JSON list of every cell's own infotext."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", parameters)
    meta.add_text(CELLS_KEY, json.dumps(cells, ensure_ascii=False), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


def read_cells(image: Image.Image) -> list[dict[str, str]]:
    """The cells' infotexts of a grid PNG (an empty list for any other picture)."""
    text = image.info.get(CELLS_KEY)
    if not isinstance(text, str):
        return []
    try:
        cells = json.loads(text)
    except (ValueError, RecursionError):  # a text chunk nested thousands deep is no grid's
        return []
    return cells if isinstance(cells, list) else []


def grid_text(plan: Plan, base: GenerationParams, result: Result, zi: int | None) -> str:
    """A grid's infotext: the settings its cells share (with its Z value, for one grid of a Z
    axis; None: the whole plot) and what the plot compares; the size and model as the cells
    were made."""
    params = plan.grid_params(base, zi) if zi is not None else base
    return infotext.format(params, seed=params.seed, width=result.width, height=result.height,
                           model_name=result.model, extra=plan.extra(zi))


# -- running a plot ------------------------------------------------------------------------------
@dataclass
class _Event:
    plan: Plan
    base: GenerationParams  # the settings every cell starts from, its seed fixed

    @property
    def seeds(self) -> str:
        return next((f"seed on the {axis.which} axis" for axis in self.plan.axes
                     if axis.kind == "seed"), f"seed {self.base.seed}")

    @property
    def summary(self) -> str:
        """'4 cells in 2 grids, seed 5'."""
        grids = f" in {self.plan.grids} grids" if self.plan.grids > 1 else ""
        return f"{self.plan.cells} cells{grids}, {self.seeds}"


@dataclass
class Started(_Event):
    """The first event: the plot's size and seed, before any cell runs."""

    @property
    def text(self) -> str:
        return f"{self.plan.name}: {self.summary}"


@dataclass
class CellProgress:
    """A running cell's progress (thinned, see run's `interval`); `cell` counts from 1."""

    cell: int
    cells: int
    where: str  # 'Cell 2/4 (CFG scale 9, Steps 4)'
    progress: Progress

    @property
    def preview(self) -> Image.Image | None:
        return self.progress.preview


@dataclass
class CellDone:
    """A cell's picture is ready (its infotext goes into the grid's cells chunk)."""

    cell: int
    cells: int
    where: str
    image: Image.Image
    infotext: str


@dataclass
class PlotGrid:
    """One finished grid: its picture, its own infotext and its cells' records."""

    image: Image.Image
    parameters: str
    cells: list[dict[str, str]]
    seed: int  # the number its file is saved under

    def png(self) -> bytes:
        return png_bytes(self.image, self.parameters, self.cells)


@dataclass
class Finished(_Event):
    """The last event. `grids`: one per Z value (none when interrupted before the first cell
    was ready); `shown`: them all in one picture carrying the plot's infotext and every cell's
    (see attach); `interrupted`: some cells never ran, so the grids have grey holes."""

    grids: list[PlotGrid] = field(default_factory=list)
    shown: Image.Image | None = None
    done: int = 0
    interrupted: bool = False


class CellFailed(Exception):
    """A cell's job could not be queued or failed; `error` is what the engine (or the caller's
    `collect`) raised. One failed cell fails the plot: a grid with a hole compares nothing."""

    def __init__(self, where: str, error: BaseException):
        super().__init__(f"{where[:1].lower()}{where[1:]}: {error}")
        self.where = where
        self.error = error


def _collect(job: JobHandle) -> Result | None:
    """The job's result; None when it was cancelled before producing anything."""
    try:
        return job.result()
    except Cancelled:
        return None


def _thinned(updates, interval: float) -> Iterator[Progress]:
    """A job's progress, at most one update per `interval` seconds (stage changes always pass)."""
    last, stage = 0.0, None
    for progress in updates:
        now = time.monotonic()
        if progress.stage != stage or now - last >= interval:
            last, stage = now, progress.stage
            yield progress


def run(engine: EngineAPI, plan: Plan, request: JobRequest, *,
        stopped: Callable[[], bool] | None = None,
        track: Callable[[JobHandle], Any] | None = None,
        forget: Callable[[JobHandle], Any] | None = None,
        collect: Callable[[JobHandle], Result | None] | None = None,
        interval: float = 0.0) -> Iterator[Started | CellProgress | CellDone | Finished]:
    """Run every cell of `plan` on `engine` (anything implementing webui.engine.EngineAPI), one
    job at a time, and yield Started, then CellProgress and CellDone per cell, then Finished.

    request: the base job: its params (a seed of -1 becomes one random seed for every cell, or
        the grid would compare noise instead of settings), init image and other inputs, owner
        and allow_paths; each cell is a copy with the cell's settings, never saved on its own.
    stopped: checked before each cell; True ends the plot early (Finished.interrupted).
    track, forget: called with each cell's job when it is queued and when it is over, so a
        caller can cancel the running job (a cancelled job also ends the plot early).
    collect: reads a finished job's outcome (default: job.result(), None when cancelled); a
        front door may pass its own to turn errors into its messages.
    interval: the least time between two CellProgress of a cell.
    Raises CellFailed when a cell fails; nothing runs after it.
    """
    base = request.params
    if base.seed < 0:
        base = base.replace(seed=random.randint(0, MAX_SEED))
    yield Started(plan, base)
    collect = collect or _collect
    nx, ny, nz = len(plan.x.values), len(plan.y.values), plan.grids
    cells: list[list[list[Image.Image | None]]] = [[[None] * nx for _ in range(ny)]
                                                    for _ in range(nz)]
    records: list[list[dict[str, str]]] = [[] for _ in range(nz)]
    done, halted, last = 0, False, None
    order = [(zi, yi, xi) for zi in range(nz) for yi in range(ny) for xi in range(nx)]
    for zi, yi, xi in order:
        if stopped is not None and stopped():
            halted = True
            break
        where = plan.where(done, xi, yi, zi)
        cell = dataclasses.replace(request, params=plan.params_for(base, xi, yi, zi), save=False)
        try:
            job = engine.submit(cell)
        except Exception as exc:
            raise CellFailed(where, exc) from exc
        if track is not None:
            track(job)
        try:
            for progress in _thinned(job.updates(), interval):
                yield CellProgress(done + 1, plan.cells, where, progress)
            result = collect(job)
        except Exception as exc:
            raise CellFailed(where, exc) from exc
        finally:
            if forget is not None:
                forget(job)
            if not job.done:
                job.cancel()
        if result is None or result.interrupted:
            halted = True
        if result is not None and result.images:
            item = result.images[0]
            cells[zi][yi][xi] = item.image
            records[zi].append(cell_record(plan, xi, yi, zi, item.infotext))
            last = result
            done += 1
            yield CellDone(done, plan.cells, where, item.image, item.infotext)
        if halted:
            break
    if last is None:
        yield Finished(plan, base, interrupted=True)
        return
    grids = []
    for zi in range(nz):
        title = f"{plan.z.title}: {plan.z.labels[zi]}" if plan.z else ""
        image = render(cells[zi], plan.x.title, plan.x.labels, plan.y.title, plan.y.labels,
                       title=title).image
        grids.append(PlotGrid(image, grid_text(plan, base, last, zi if plan.z else None),
                              records[zi], base.seed))
    everything = [record for grid in grids for record in grid.cells]
    shown = attach(stack([grid.image for grid in grids]),
                   grids[0].parameters if nz == 1 else grid_text(plan, base, last, None),
                   everything)
    yield Finished(plan, base, grids, shown, done, halted)


def save(grids: list[PlotGrid], outputs_dir: str | Path, owner: str | None = None,
         folder: str | Path | None = None) -> list[Path]:
    """Write each grid as the next NNNNN-SEED.png of outputs/img2img-grids/YYYY-MM-DD (the
    owner's own folder with a login), or of `folder` when given; the paths written."""
    if folder is None:
        target = day_folder(outputs_dir, kind=GRIDS_SUBDIR, owner=owner)
    else:
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
    return [write_numbered(grid.png(), target, grid.seed) for grid in grids]
