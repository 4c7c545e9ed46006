"""X/Y plot: one picture over a grid of two settings, the same seed in every cell.

Artists learn what denoising strength and CFG do from a table of examples; this renders that table
for their own picture. Values are validated through GenerationParams, so a bad cell fails before
any GPU time is spent, with a message naming the axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..params import GenerationParams, ParamsError

# Axis label -> GenerationParams field. The first two are the default pair.
AXES: dict[str, str] = {
    "Denoising strength": "strength",
    "CFG scale": "guidance_scale",
    "Steps": "steps",
    "Sampler": "scheduler",
}
# What a freshly picked axis starts with: the guide's usual comparison points.
DEFAULT_VALUES: dict[str, str] = {
    "strength": "0.3, 0.5, 0.7",
    "guidance_scale": "5, 7, 10",
    "steps": "10, 20, 30",
    "scheduler": "Euler a, DPM++ 2M Karras, DDIM",
}
# Every cell is a full img2img job; beyond this a grid takes too long and reads badly anyway.
MAX_CELLS = 36
# Cells are shrunk to this size so a 6x6 grid of large pictures stays a sane PNG.
MAX_CELL_SIDE = 512

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
EMPTY_CELL = (200, 200, 200)


class AxisError(ValueError):
    """An axis or its values are unusable; `field` names the UI input at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class Plan:
    x_axis: str
    x_values: list[Any]
    y_axis: str
    y_values: list[Any]

    @property
    def x_field(self) -> str:
        return AXES[self.x_axis]

    @property
    def y_field(self) -> str:
        return AXES[self.y_axis]

    @property
    def cells(self) -> int:
        return len(self.x_values) * len(self.y_values)

    def params_for(self, base: GenerationParams, xi: int, yi: int) -> GenerationParams:
        return base.replace(**{self.x_field: self.x_values[xi], self.y_field: self.y_values[yi]})


def default_values(axis: str) -> str:
    return DEFAULT_VALUES[AXES[axis]]


def parse_axis(axis: str, text: str, base: GenerationParams, which: str = "X") -> list[Any]:
    """The validated values of one axis, in the order typed, duplicates dropped."""
    if axis not in AXES:
        raise AxisError(f"{which} axis", f"{which} axis must be one of: {', '.join(AXES)} "
                        f"(got {axis!r})")
    name = AXES[axis]
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise AxisError(f"{which} values", f"{which} values: type {axis} values separated by "
                        f"commas, e.g. {DEFAULT_VALUES[name]}")
    values: list[Any] = []
    for item in items:
        try:
            value = getattr(base.replace(**{name: item}), name)
        except ParamsError as exc:
            raise AxisError(f"{which} values", f"{which} values ({axis}): {exc}") from None
        if value not in values:
            values.append(value)
    return values


def plan(x_axis: str, x_text: str, y_axis: str, y_text: str, base: GenerationParams) -> Plan:
    """Both axes parsed and the grid size checked; AxisError on any problem."""
    xs = parse_axis(x_axis, x_text, base, "X")
    ys = parse_axis(y_axis, y_text, base, "Y")
    if x_axis == y_axis:
        raise AxisError("Y axis", f"X and Y are both {x_axis}: pick two different settings")
    result = Plan(x_axis, xs, y_axis, ys)
    if result.cells > MAX_CELLS:
        raise AxisError("X values", f"{len(xs)} x {len(ys)} = {result.cells} cells is too many: "
                        f"an X/Y plot has at most {MAX_CELLS} cells; use fewer values")
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


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        # Without FreeType only the fixed bitmap font exists.
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def render(cells: list[list[Image.Image | None]], x_axis: str, x_values: list[Any],
           y_axis: str, y_values: list[Any]) -> Grid:
    """One labelled image: cells[row][col] with row = Y value and column = X value.

    The X axis name runs over the columns with each column's value under it; the Y axis name sits
    in the corner with each row's value beside its row. Columns widen to fit their value, so long
    sampler names stay readable next to small pictures. Missing cells (an interrupted plot) are
    drawn grey, so the table keeps its shape.
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
    col_labels = [value_label(v) for v in x_values]
    row_labels = [value_label(v) for v in y_values]
    texts = col_labels + row_labels + [x_axis, y_axis]
    line_h = max(_text_size(probe, text, font)[1] for text in texts)
    pad = max(4, line_h // 2)
    widest_col = max(_text_size(probe, text, font)[0] for text in col_labels)
    cw, ch = max(iw, widest_col + 2 * pad), ih
    left = max(_text_size(probe, text, font)[0] for text in row_labels + [y_axis]) + 2 * pad
    top = 2 * (line_h + pad) + pad
    grid_w = cw * len(x_values)
    # The axis name must fit over the columns, however few and narrow they are.
    width = left + max(grid_w, _text_size(probe, x_axis, font)[0] + 2 * pad)

    image = Image.new("RGB", (width, top + ch * len(y_values)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_w, _ = _text_size(draw, x_axis, font)
    draw.text((left + max(0, (grid_w - title_w) // 2), pad), x_axis, fill=INK, font=font)
    value_y = pad + line_h + pad
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
    return Grid(image, col_labels + row_labels, (x_axis, y_axis))
