"""GenerationParams: every setting of an img2img job, with its range, default and meaning.

This is the single source of truth for ranges and defaults: the sliders, the CLI flags, the
infotext parser and the preset validation all read it. Images are not settings: the init image
(and later the reference image and mask) travel beside the params, so that the same object can
be written into a PNG's infotext or a preset file unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import schedulers

# Each choice list has one home, its Literal type; the tuples are read from it for menus and
# checks elsewhere.
ResizeMode = Literal["just resize", "crop and resize", "resize and fill"]
RESIZE_MODES = get_args(ResizeMode)
Dtype = Literal["auto", "fp16", "bf16", "fp32"]
DTYPES = get_args(Dtype)
MemoryMode = Literal["auto", "on", "off"]
MEMORY_MODES = get_args(MemoryMode)
MaskedContent = Literal["original", "fill", "latent noise", "latent nothing"]
MASKED_CONTENT = get_args(MaskedContent)
# What a job does with its picture: transform it all, or repaint where a mask says.
MODES = ("img2img", "inpaint")
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


class LoraWeight(BaseModel):
    """One LoRA from the LoRA folder and how strongly it applies."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., min_length=1, max_length=200,
                      description="File name under models/Lora, without .safetensors.")
    weight: float = Field(1.0, ge=-4.0, le=4.0,
                          description="0 = no effect, 1 = as trained; negative inverts it.")


class ControlNetUnit(BaseModel):
    """One ControlNet: a structure ("blueprint") the picture must follow."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(..., min_length=1, max_length=1000,
                       description="ControlNet model: a diffusers folder or .safetensors file.")
    source: Literal["init image", "upload"] = Field(
        "init image", description="Where the control picture comes from: the init image itself "
        "or an uploaded control image.")
    preprocessor: Literal["canny", "depth", "pose", "none"] = Field(
        "canny", description="canny: edges of the control picture; depth / pose: its depth map "
        "or body pose, drawn by a detector model; none: use it as it is (an edge, pose or depth "
        "map made elsewhere).")
    detector: str = Field(
        "", max_length=1000, description="Detector model for depth / pose: a folder under "
        "models/ControlNet-preprocessors; empty picks the first of that kind.")
    scale: float = Field(1.0, ge=0.0, le=2.0, description="Conditioning scale: how strictly "
                         "the structure is followed.")
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps after which "
                         "it starts acting.")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps after which it "
                       "stops acting.")
    low: int = Field(100, ge=1, le=255, description="Canny low threshold.")
    high: int = Field(200, ge=1, le=255, description="Canny high threshold.")


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
    resize_mode: ResizeMode = Field(
        "just resize",
        description="How the init image meets the output size: stretch, crop to fill, or fit and "
        "fill the borders.",
    )
    batch_count: int = Field(1, ge=1, le=100, description="How many batches run one after another.")
    batch_size: int = Field(
        1, ge=1, le=8, description="Images per batch; image k of a job uses seed + k."
    )
    dtype: Dtype = Field(
        "auto", description="Weights precision: auto is fp16 on CUDA and fp32 on the CPU."
    )
    attention_slicing: MemoryMode = Field(
        "auto",
        description="Compute attention in slices: less VRAM, slightly slower. auto turns it on "
        "when free VRAM is low.",
    )
    vae_tiling: MemoryMode = Field(
        "auto",
        description="Decode the picture in tiles: large images fit in little VRAM (tiles can "
        "show faint seams). auto turns it on for large images when free VRAM is low.",
    )
    cpu_offload: MemoryMode = Field(
        "auto",
        description="Keep only the running part of the model on the GPU: fits small GPUs, "
        "slower. CUDA only; auto turns it on when the model does not fit.",
    )
    loras: list[LoraWeight] = Field(
        default_factory=list, max_length=16,
        description="LoRAs with weights (also written in the prompt as <lora:name:weight>).",
    )
    ip_adapter: str = Field(
        "", max_length=1000,
        description="IP-Adapter model (a folder with models/image_encoder, or a hub id); empty = "
        "none. It applies when a reference image is given.",
    )
    ip_adapter_scale: float = Field(
        0.5, ge=0.0, le=1.0, description="How strongly the reference image steers the result."
    )
    pag_scale: float = Field(
        3.0, ge=0.0, le=10.0,
        description="Perturbed-attention guidance: sharper structure at about 1.5x the time per "
        "step; 0 turns it off.",
    )
    draft: int = Field(
        0, ge=0, le=4,
        description="Draft mode (lossy, faster): after each step that runs the whole UNet, this "
        "many steps reuse its deep features and compute only its outermost blocks; 0 is off, "
        "1-2 keep the picture close, 3-4 are rough drafts.",
    )
    mask_blur: int = Field(4, ge=0, le=64, description="Inpaint: mask edge blur in pixels.")
    inpaint_area: Literal["whole picture", "only masked"] = Field(
        "whole picture", description="Inpaint: repaint at the whole picture's scale, or cut out "
        "the masked area (plus padding), repaint it at full size and paste it back.",
    )
    inpaint_padding: int = Field(
        32, ge=0, le=256, description="Inpaint only masked: context pixels around the mask."
    )
    masked_content: MaskedContent = Field(
        "original", description="Inpaint: what the masked area starts from.",
    )
    controlnets: list[ControlNetUnit] = Field(
        default_factory=list, max_length=3, description="ControlNets, applied together."
    )
    output_type: Literal["image", "latent"] = Field(
        "image", description="image: a PNG; latent: the raw latents as .safetensors, to continue "
        "from later.",
    )
    color_correction: bool = Field(
        False,
        description="Colour correction: match each result's colours to the init image "
        "(histogram match in LAB), against the colour drift of repeated img2img passes; on by "
        "default for loopback. Pictures only: latent output is never corrected.",
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

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        # A NUL or an escape code in a prompt is a paste gone wrong (or a probe), never words;
        # tabs and line breaks are text.
        for position, char in enumerate(value, 1):
            if (ord(char) < 32 and char not in "\t\n\r") or 127 <= ord(char) < 160:
                raise ValueError(f"holds a control character (U+{ord(char):04X}) at position "
                                 f"{position}; remove it")
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


def _numeric_info(name: str, model: type[BaseModel] | None = None):
    return (model or GenerationParams).model_fields[name]


def field_range(name: str, model: type[BaseModel] | None = None
                ) -> tuple[float | None, float | None]:
    """(min, max) of a numeric field, from its declaration."""
    lo = hi = None
    for meta in _numeric_info(name, model).metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return lo, hi


def default(name: str) -> Any:
    info = GenerationParams.model_fields[name]
    return info.default_factory() if info.default_factory else info.default


def choices(name: str, model: type[BaseModel] | None = None) -> tuple:
    """The allowed values of a Literal field, from its declaration."""
    return tuple(get_args(_numeric_info(name, model).annotation))


def _locate(loc: tuple) -> tuple[str, type[BaseModel] | None, str | None]:
    """('loras[0].weight', LoraWeight, 'weight'): the path, the model holding the field, its name.
    When the location names no known field, the model is None and the last slot is the name of
    the model that lacks it ('ControlNetUnit')."""
    model: type[BaseModel] | None = GenerationParams
    owner, path, leaf = None, "", None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        path += ("." if path else "") + str(part)
        if model is None or part not in model.model_fields:
            return path, None, model.__name__ if model else None
        owner, leaf = model, str(part)
        inner = [a for a in get_args(model.model_fields[leaf].annotation)
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        model = inner[0] if inner else None
    return path, owner, leaf


def explain(error: dict) -> tuple[str, str]:
    """(field path, one sentence naming it, the allowed values and what was given)."""
    loc = tuple(error.get("loc") or ("params",))
    field, owner, leaf = _locate(loc)
    got = error.get("input")
    kind = error.get("type", "")
    if owner is None or leaf is None:
        scope = {m.__name__: m for m in (GenerationParams, LoraWeight, ControlNetUnit)}
        known = ", ".join(scope.get(leaf or "", GenerationParams).model_fields)
        return field, f"{field}: unknown setting (known settings: {known})"
    info = owner.model_fields[leaf]
    if kind.startswith("literal") or kind == "enum":
        allowed = ", ".join(map(str, choices(leaf, owner)))
        return field, f"{field} must be one of: {allowed} (got {got!r})"
    lo, hi = field_range(leaf, owner)
    annotation = str(info.annotation)
    noun = "a whole number" if "int" in annotation else "a number"
    if leaf in ("width", "height") and owner is GenerationParams:
        noun = "a whole number of pixels (or empty for the init image's size)"
    if lo is not None and hi is not None and not kind.startswith(("list", "too_", "string")):
        span = f"from {_num(lo)} to {_num(hi)}"
        if isinstance(got, float) and not math.isfinite(got):
            return field, f"{field} must be {noun} {span}, not {got}"
        return field, f"{field} must be {noun} {span} (got {got!r})"
    if kind.startswith("bool"):
        return field, f"{field} must be true or false (got {got!r})"
    if kind == "string_too_long":
        return field, f"{field} is too long (at most {error['ctx']['max_length']} characters)"
    if kind == "string_too_short":
        return field, f"{field} must not be empty"
    if kind == "too_long":
        return field, f"{field}: at most {error['ctx']['max_length']} entries"
    if kind == "string_unicode":
        return field, f"{field} is not valid Unicode text (a lone surrogate character)"
    if kind == "string_type":
        return field, f"{field} must be text (got {type(got).__name__})"
    if kind == "list_type":
        return field, f"{field} must be a list (got {type(got).__name__})"
    if kind in ("model_type", "dict_type"):
        return field, f"{field} must be an object with named settings (got {got!r})"
    msg = error.get("msg", "is invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return field, f"{field} {msg} (got {got!r})"


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def make(**values: Any) -> GenerationParams:
    """GenerationParams from keyword values, raising ParamsError (first bad field) on bad input."""
    try:
        return GenerationParams(**values)
    except ValidationError as exc:
        field, message = explain(exc.errors()[0])
        raise ParamsError(field, message) from None
