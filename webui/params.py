"""GenerationParams: every setting of an img2img job, with its range, default and meaning.

This is the single source of truth for ranges and defaults: the sliders, the CLI flags, the
infotext parser and the preset validation all read it. Images are not settings: the init image
(and later the reference image and mask) travel beside the params, so that the same object can
be written into a PNG's infotext or a preset file unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import schedulers

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
DTYPES = ("auto", "fp16", "bf16", "fp32")
MEMORY_MODES = ("auto", "on", "off")
MAX_SEED = 2**32 - 1

# The guide's standard negative prompt set.
STANDARD_NEGATIVE = (
    "blurry, bad anatomy, ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face, "
    "out of frame, extra limbs, disfigured, deformed, body out of frame, bad art, extra fingers, "
    "mutated hands, watermark, grainy, signature, cut off, draft"
)

# The guide's denoising bands.
BANDS = {"subtle": (0.1, 0.4), "medium": (0.4, 0.7), "overhaul": (0.7, 1.0)}


def band_of(strength: float) -> str:
    """'original' for 0, else the guide's band name for a denoising strength."""
    if strength <= 0:
        return "original"
    if strength < 0.4:
        return "subtle"
    if strength <= 0.7:
        return "medium"
    return "overhaul"


class ParamsError(ValueError):
    """A setting is out of range or of the wrong type; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class GenerationParams(BaseModel):
    """The settings of one img2img job (see the module docstring for what is not in here)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    prompt: str = Field("", max_length=20_000, description="What the picture should become.")
    negative_prompt: str = Field(
        "", max_length=20_000, description="What should not appear; see STANDARD_NEGATIVE."
    )
    strength: float = Field(
        0.65, ge=0.0, le=1.0,
        description="Denoising strength: 0 returns the original, 0.1-0.4 subtle, 0.4-0.7 medium "
        "(start at 0.65), 0.7-1 overhaul; 1 ignores the init image's content.",
    )
    guidance_scale: float = Field(
        7.0, ge=0.0, le=30.0,
        description="CFG scale: how strictly the prompt is followed. 7 default, 9-10 when the "
        "prompt is ignored, 5-6 when the result looks over-baked.",
    )
    steps: int = Field(
        25, ge=1, le=150,
        description="Sampling steps at strength 1; img2img runs int(steps x strength) of them. "
        "30-40 against blur.",
    )
    seed: int = Field(
        -1, ge=-1, le=MAX_SEED,
        description="-1 picks a random seed (the one used is reported); a reused seed with the same "
        "settings reproduces the image.",
    )
    scheduler: str = Field(
        "Euler a",
        description="Sampler: an artist name ('Euler a', 'DPM++ 2M Karras', ...) or a diffusers "
        "class name; stored as the artist name.",
    )
    width: int | None = Field(
        None, ge=64, le=4096,
        description="Output width in pixels, snapped down to a multiple of 8; empty keeps the init "
        "image's width.",
    )
    height: int | None = Field(
        None, ge=64, le=4096,
        description="Output height in pixels, snapped down to a multiple of 8; empty keeps the init "
        "image's height.",
    )
    resize_mode: Literal["just resize", "crop and resize", "resize and fill"] = Field(
        "just resize",
        description="How the init image meets the output size: stretch, crop to fill, or fit and "
        "fill the borders.",
    )
    batch_count: int = Field(1, ge=1, le=100, description="How many batches run one after another.")
    batch_size: int = Field(
        1, ge=1, le=8, description="Images per batch; image k of a job uses seed + k."
    )
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(
        "auto", description="Weights precision: auto is fp16 on CUDA and fp32 on the CPU."
    )
    attention_slicing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Compute attention in slices: less VRAM, slightly slower. auto turns it on "
        "when free VRAM is low.",
    )
    vae_tiling: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Decode the picture in tiles: large images fit in little VRAM (tiles can "
        "show faint seams). auto turns it on for large images when free VRAM is low.",
    )
    cpu_offload: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep only the running part of the model on the GPU: fits small GPUs, "
        "slower. CUDA only; auto turns it on when the model does not fit.",
    )
    model: str = Field(
        "", max_length=1000,
        description="Model name, folder, .safetensors file or hub id; empty uses the studio's "
        "current model.",
    )

    @field_validator("strength", "guidance_scale", "steps", "seed", "width", "height",
                     "batch_count", "batch_size", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # True would silently become 1 step or seed 1.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        try:
            return schedulers.canonical(value)
        except ValueError:
            raise ValueError(
                "must be one of: " + ", ".join(schedulers.all_names())
            ) from None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        return None if value is None else value - value % 8

    @property
    def effective_steps(self) -> int:
        """How many denoising steps img2img really runs: int(steps x strength)."""
        return int(self.steps * self.strength)

    @property
    def images_per_job(self) -> int:
        return self.batch_count * self.batch_size

    def replace(self, **changes: Any) -> "GenerationParams":
        """A validated copy with some fields changed."""
        return make(**{**self.model_dump(), **changes})


def field_range(name: str) -> tuple[float | None, float | None]:
    """(min, max) of a numeric field, from its declaration."""
    lo = hi = None
    for meta in GenerationParams.model_fields[name].metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return lo, hi


def default(name: str) -> Any:
    return GenerationParams.model_fields[name].default


def _explain(field: str, error: dict) -> str:
    """One sentence naming the field, the allowed values and what was given."""
    got = error.get("input")
    info = GenerationParams.model_fields.get(field)
    kind = error.get("type", "")
    if info is None:
        known = ", ".join(GenerationParams.model_fields)
        return f"{field}: unknown setting (known settings: {known})"
    if kind.startswith("literal") or kind == "enum":
        return f"{field} must be one of: {', '.join(map(str, _choices(field)))} (got {got!r})"
    lo, hi = field_range(field)
    annotation = str(info.annotation)
    noun = "a whole number" if "int" in annotation else "a number"
    if field in ("width", "height"):
        noun = "a whole number of pixels (or empty for the init image's size)"
    if lo is not None and hi is not None:
        span = f"from {_num(lo)} to {_num(hi)}"
        if isinstance(got, float) and not math.isfinite(got):
            return f"{field} must be {noun} {span}, not {got}"
        return f"{field} must be {noun} {span} (got {got!r})"
    if kind == "string_too_long":
        return f"{field} is too long (at most {info.metadata[0].max_length} characters)"
    if kind == "string_type":
        return f"{field} must be text (got {type(got).__name__})"
    msg = error.get("msg", "is invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{field} {msg} (got {got!r})"


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choices(field: str) -> tuple:
    if field in ("attention_slicing", "vae_tiling", "cpu_offload"):
        return MEMORY_MODES
    return {"resize_mode": RESIZE_MODES, "dtype": DTYPES}.get(field, ())


def make(**values: Any) -> GenerationParams:
    """GenerationParams from keyword values, raising ParamsError (first bad field) on bad input."""
    try:
        return GenerationParams(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error.get("loc") else "params"
        raise ParamsError(field, _explain(field, error)) from None
