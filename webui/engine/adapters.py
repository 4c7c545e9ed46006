"""Adapters on one resident pipeline: LoRAs, IP-Adapter, PAG, inpainting, ControlNet, latents.

`Adapters(base_pipe, lora_dir)` is bound to the engine's resident img2img pipeline. Each job calls
`prepare(...)`, which brings the pipeline's adapter state to what the job asks for, doing as little
as possible (a LoRA already loaded is never read again, a weight change is one `set_adapters`), and
returns the pipeline to call plus the keyword arguments for that call:

    pipe, kwargs = adapters.prepare("img2img", image=init, loras=[("film", 0.8)], pag_scale=3.0)
    images = pipe(prompt=..., strength=..., generator=..., **kwargs).images

Every pipeline `prepare` returns shares the base pipeline's modules (UNet, VAE, text encoders,
scheduler): inpainting, PAG and ControlNet are the same weights driven by another pipeline class,
never a second copy. LoRAs and the IP-Adapter live inside those shared modules, so they apply
whichever pipeline runs. When no adapter is asked for, the base pipeline is returned in its base
state and gives exactly the output it gave before any adapter was used.

Failures raise AdapterError with a sentence meant for the artist. A LoRA that fails to load leaves
the previous job's LoRAs exactly as they were; an IP-Adapter that fails leaves none loaded; in
every case the next job runs normally.

Inpainting (mode 'inpaint', white = repaint):
- mask_blur: Gaussian blur radius in px applied to the mask. The pipeline binarises the mask for
  the latents, so the blur mostly shows where the result is pasted into the picture (inpaint only
  masked, `overlay_original`): a soft seam instead of a hard edge.
- inpaint_full_res ("inpaint only masked"): the masked area plus `padding` px is cut out,
  repainted at the full output size, and pasted back; everything else stays pixel-exact.
- masked_content, what the masked area starts from:
  'original': the picture itself (denoised by `strength`), the library's standard behaviour;
  'fill': the hole is first filled with colours pulled in from its border (blurred), so the
      model starts from a smooth guess instead of the old content; works with every model;
  'latent noise': the hole's latents are replaced by random noise (seeded by `seed`) before
      img2img noising, so even a low strength invents new content there;
  'latent nothing': the hole's latents are set to zero (a flat neutral start).
  The two latent options need a standard 4-channel model and full-picture inpainting: an
  inpainting model (9-channel UNet) is given the masked picture itself, and "only masked" crops
  pixels, which latents cannot be.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..params import LoraWeight, field_range
from .detectors import Detectors
from .errors import ModelError
from .memory import SLICING_WITH_IP_ADAPTER
from .models import FAMILY_LABELS as _FAMILY, PICKLE_SUFFIXES, pipeline_family

MODES = ("img2img", "inpaint")
# LoRA weights, from the picker or from a <lora:name:weight> tag: the one range params.py sets.
LORA_MIN, LORA_MAX = field_range("weight", LoraWeight)
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")
LATENT_FORMAT = "webui-latents/1"
# `[^<>]*`: a tag never holds another '<', so a prompt of many unclosed tags is scanned once
# (with `[^>]*` every '<lora:' rescanned the rest of the prompt).
_LORA_TAG = re.compile(r"<\s*lora\s*:([^<>]*)>", re.IGNORECASE)
# Keys that only LoRA-style files contain (peft, trainer, LoHa and LoKr layouts).
_LORA_KEY = re.compile(r"lora_(down|up|A|B)\b|\.lora\.(down|up)\.|hada_w|lokr_w|\.alpha$")


class AdapterError(ModelError):
    """An adapter could not be used; `field` names the input ('lora', 'ip_adapter', 'mask', ...)."""

    def __init__(self, message: str, field: str = "adapters"):
        super().__init__(message)
        self.field = field


# -- specs -----------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    """A LoRA by name (its path under the LoRA folder, without .safetensors) and its weight."""

    name: str
    weight: float = 1.0


@dataclass
class IPAdapterSpec:
    """An IP-Adapter: a local folder or hub id, the reference image and its scale (0-1).

    subfolder / weight_name default to what the folder holds ('models' for SD1, 'sdxl_models'
    then 'models' for SDXL; the single ip-adapter*.safetensors there). The image encoder is
    `<subfolder>/image_encoder`, else `models/image_encoder`.
    """

    model: str
    image: Any = None
    scale: float = 0.5
    subfolder: str | None = None
    weight_name: str | None = None


@dataclass
class ControlNetSpec:
    """One ControlNet: its model (a diffusers folder or a .safetensors file) and control image.

    preprocessor 'canny' turns `image` into an edge map first (thresholds `low` / `high`);
    'depth' and 'pose' into a depth or pose map, drawn by the detector model folder `detector`
    (see detectors.py); 'none' uses `image` as the control image. scale is the conditioning
    strength; start / end the fraction of the denoising steps during which the ControlNet acts.
    """

    model: str
    image: Any = None
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: str = "none"
    low: float = 100
    high: float = 200
    detector: str = ""


@dataclass
class _LoadedLora:
    adapter: str
    path: Path
    stamp: tuple[int, int]


@dataclass
class _Cache:
    """Things kept between jobs so that turning an adapter off and on again reads no file."""

    ip_key: tuple | None = None
    ip_state: dict | None = None
    ip_encoder: Any = None
    controlnets: dict = field(default_factory=dict)  # path -> (stamp, model)


# -- prompt syntax ---------------------------------------------------------------------------


def parse_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Split `<lora:name:weight>` tags out of a prompt: (clean prompt, [(name, weight), ...]).

    The weight is optional (default 1.0) and may be negative; spaces around the parts are
    ignored. A name given twice keeps its first place and its last weight. The tags are removed
    from the prompt so the text encoder never sees them.
    """
    found: dict[str, float] = {}
    for match in _LORA_TAG.finditer(prompt):
        name, sep, weight_text = match.group(1).partition(":")
        name = name.strip()
        if not name:
            raise AdapterError(f"{match.group(0)!r} names no LoRA: write <lora:name> or "
                               "<lora:name:0.8>", "prompt")
        weight = 1.0
        if sep and weight_text.strip():
            if not _is_number(weight_text):
                raise AdapterError(f"{match.group(0)!r}: the weight must be a number, as in "
                                   f"<lora:{name}:0.8>", "prompt")
            weight = float(weight_text)
            if not LORA_MIN <= weight <= LORA_MAX:
                raise AdapterError(f"{match.group(0)!r}: the weight must be from {LORA_MIN:g} to "
                                   f"{LORA_MAX:g}, as in the LoRA picker", "prompt")
        found[name] = weight
    if not found:
        return prompt, []
    # Tidy the gaps the tags leave: runs of spaces, and commas left with nothing between them.
    # String operations rather than patterns like r"\s+,", which backtrack quadratically on
    # long runs of whitespace.
    clean = re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub(" ", prompt))
    parts = [part.strip() for part in clean.split(",")]
    return ", ".join(part for part in parts if part), list(found.items())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() != "" and text.strip().lower() not in ("nan", "inf", "-inf", "+inf")


def adapter_name(name: str) -> str:
    """A valid, unique peft adapter name for a LoRA name (module names allow only [A-Za-z0-9_])."""
    safe = re.sub(r"\W", "_", name, flags=re.ASCII).strip("_") or "lora"
    if safe != name:
        # Two names that sanitise alike ('a-b', 'a b') must not share one adapter slot.
        safe += "_" + hashlib.sha1(name.encode()).hexdigest()[:6]
    # A prefix keeps names like 'weight' or '0' from clashing with module attributes.
    return "l_" + safe


# -- latents ---------------------------------------------------------------------------------


def latents_bytes(tensor, params: dict | None = None) -> bytes:
    """Latents (N, C, h, w) as .safetensors bytes with `params` as JSON in the metadata."""
    import torch
    from safetensors.torch import save

    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        raise AdapterError("latents must be a tensor shaped (batch, channels, height/8, width/8)",
                           "latents")
    metadata = {"format": LATENT_FORMAT, "params": json.dumps(params or {}, default=str),
                "shape": json.dumps(list(tensor.shape))}
    return save({"latents": tensor.detach().to("cpu").contiguous()}, metadata=metadata)


def save_latents(tensor, path, params: dict | None = None) -> Path:
    """Write latents (N, C, h, w) to a .safetensors file with `params` as JSON in its metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterError(f"{path.name}: latents are saved as .safetensors files", "latents")
    data = latents_bytes(tensor, params)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def load_latents(path, channels: int | None = 4, size: tuple[int, int] | None = None,
                 scale_factor: int = 8):
    """(latents, params) from a file written by save_latents, checked against what is expected.

    channels: the VAE's latent channels (4 for SD1/SDXL; None skips the check). size: the picture
    size (width, height) the latents must decode to, or None.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise AdapterError(f"{path.name}: only .safetensors latent files can be loaded", "latents")
    if not path.is_file():
        raise AdapterError(f"no latent file at {path}", "latents")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "latents" not in f.keys():
                raise AdapterError(f"{path.name} holds no 'latents' tensor; save latents with "
                                   "output type 'latent' first", "latents")
            tensor = f.get_tensor("latents")
    except SafetensorError as exc:
        raise AdapterError(f"{path.name} is not a readable safetensors file ({exc})",
                           "latents") from None
    if metadata.get("format") != LATENT_FORMAT:
        raise AdapterError(f"{path.name} was not written by save_latents (no latent metadata)",
                           "latents")
    try:
        params = json.loads(metadata.get("params", "{}"))
    except json.JSONDecodeError:
        raise AdapterError(f"{path.name}: its stored settings are not valid JSON", "latents") \
            from None
    check_latents(tensor, channels=channels, size=size, scale_factor=scale_factor)
    return tensor, params


def check_latents(tensor, channels: int | None = 4, size: tuple[int, int] | None = None,
                  scale_factor: int = 8) -> None:
    """Raise AdapterError unless `tensor` is a latent batch of `channels` matching `size` (w, h)."""
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(getattr(tensor, "shape", ()))
        raise AdapterError(f"latents must be shaped (batch, channels, height/8, width/8), got "
                           f"{shape}", "latents")
    if channels is not None and tensor.shape[1] != channels:
        raise AdapterError(f"the latents have {tensor.shape[1]} channels but this model's VAE uses "
                           f"{channels}; they were made with another kind of model", "latents")
    if size is not None:
        want = (size[1] // scale_factor, size[0] // scale_factor)
        got = tuple(tensor.shape[2:])
        if got != want:
            raise AdapterError(
                f"the latents decode to {got[1] * scale_factor}x{got[0] * scale_factor} pixels but "
                f"{size[0]}x{size[1]} was asked for; set width/height to the latents' size",
                "latents")
    if not torch.isfinite(tensor).all():
        raise AdapterError("the latents contain NaN or infinite values", "latents")


# -- masks -----------------------------------------------------------------------------------


def mask_to_l(mask):
    """A mask as a PIL 'L' image, white = repaint.

    RGBA / LA masks with any transparency use their alpha (a brush layer: painted = repaint,
    whatever its colour); opaque ones use their brightness. Arrays: bool or 0-1 floats or 0-255.
    """
    import numpy as np
    from PIL import Image

    if isinstance(mask, (str, Path)):
        mask = Image.open(mask)
    if isinstance(mask, np.ndarray):
        array = mask
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype.kind == "f":
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
        if array.ndim == 3:
            array = array[..., 0]
        mask = Image.fromarray(array.astype(np.uint8), "L")
    if not isinstance(mask, Image.Image):
        raise AdapterError("the mask must be an image (white = repaint)", "mask")
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return mask.convert("L")


def blur_mask(mask, radius: float):
    from PIL import ImageFilter

    return mask if radius <= 0 else mask.filter(ImageFilter.GaussianBlur(radius))


def fill_masked(image, mask, passes: int = 12):
    """The picture with the masked area filled from its surroundings (the 'fill' start).

    The hole starts as the average colour of the kept pixels; repeated blurs, each pasted back
    inside the hole only, pull the border colours inwards, so the model starts from a smooth
    guess that matches the edges instead of from the old content.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    rgb = image.convert("RGB")
    hole = np.asarray(mask.convert("L")) >= 128
    if not hole.any():
        return rgb
    pixels = np.asarray(rgb).astype(np.float32)
    kept = pixels[~hole]
    pixels[hole] = kept.mean(axis=0) if len(kept) else 127.0
    current = Image.fromarray(pixels.round().astype(np.uint8))
    hole_image = Image.fromarray((hole * 255).astype(np.uint8), "L")
    radius = max(2.0, max(rgb.size) / 16)
    for k in range(passes):
        blurred = current.filter(ImageFilter.GaussianBlur(radius * (1 - k / (passes + 1))))
        current = Image.composite(blurred, current, hole_image)
    return current


def overlay_original(images, init, mask, blur: float = 4):
    """Paste `init` back outside the mask of each result image, as other SD tools do.

    The pipeline's latent blending keeps the unmasked area only approximately (it goes through
    the VAE, and "only masked" pastes with the blurred mask, which reaches past the painted
    area). Here every pixel outside the mask as painted (value 0, before any blur) is the
    original's, exactly; the `blur` px seam fades inwards, inside the painted area.
    """
    import numpy as np
    from PIL import Image

    painted = mask_to_l(mask)
    soft = np.asarray(blur_mask(painted, blur), dtype=np.uint8)
    alpha = Image.fromarray(np.where(np.asarray(painted) > 0, soft, 0).astype(np.uint8), "L")
    out = []
    for image in images:
        base = init.convert("RGB")
        if base.size != image.size:
            base = base.resize(image.size)
        m = alpha.resize(image.size) if alpha.size != image.size else alpha
        out.append(Image.composite(image.convert("RGB"), base, m))
    return out


# -- the adapter manager ---------------------------------------------------------------------


class Adapters:
    """The adapter state of one resident base pipeline (see the module docstring).

    base_pipe: a StableDiffusion(XL)Img2ImgPipeline, already on its device and dtype.
    lora_dir: the LoRA folder (models/Lora); LoRAs are found there by relative name.
    max_controlnets: ControlNet models kept loaded between jobs (least recently used dropped).
    detectors: the depth / pose detector cache (shared with the engine's previews); default: a
        new one on `device`.
    device: where the pipeline computes, and so where ControlNets and the IP-Adapter's image
        encoder go (default: the UNet's device; under model CPU offload the UNet sits on the
        CPU between calls, so the engine passes its GPU).
    """

    def __init__(self, base_pipe, lora_dir="models/Lora", max_controlnets: int = 3,
                 detectors: Detectors | None = None, device: str | None = None,
                 family: str | None = None):
        self.base = base_pipe
        # The engine knows the family from the model source; alone, it is read off the pipe.
        self.family = family or pipeline_family(base_pipe)
        self.lora_dir = Path(lora_dir)
        self.max_controlnets = max_controlnets
        self.device = device or str(base_pipe.unet.device)
        self.detectors = detectors or Detectors(self.device)
        self._loras: dict[str, _LoadedLora] = {}  # LoRA name -> loaded adapter
        self._active: tuple | None = None  # ((adapter, weight), ...) last given to set_adapters
        self._pipes: dict[tuple, Any] = {}
        self._cache = _Cache()
        self._ip_scale: float | None = None
        self.notices: list[str] = []  # things the artist should know about the last prepare
        self.load_calls = 0  # LoRA files read; tests and logs use it to see reloads
        # Whether LoRA layers may exist; saves walking every module on each plain job.
        self._peft_touched = True

    # -- information ---------------------------------------------------------------------
    @property
    def inpainting_model(self) -> bool:
        """Whether the UNet is an inpainting one (9 input channels: latents, mask, picture)."""
        return self.base.unet.config.in_channels == 9

    def available_loras(self) -> dict[str, Path]:
        """LoRA name -> file, for every .safetensors under the LoRA folder (names sorted)."""
        found: dict[str, Path] = {}
        if self.lora_dir.is_dir():
            for path in sorted(self.lora_dir.rglob("*.safetensors")):
                if path.is_file():
                    found[path.relative_to(self.lora_dir).with_suffix("").as_posix()] = path
        return found

    def loaded_loras(self) -> dict[str, float]:
        """LoRA name -> weight of the LoRAs applied to the pipeline now."""
        weights = dict(self._active or ())
        return {name: weights.get(entry.adapter, 0.0) for name, entry in self._loras.items()}

    def ip_adapter_loaded(self) -> bool:
        return self._cache.ip_key is not None

    # -- LoRA ----------------------------------------------------------------------------
    def resolve_lora(self, name: str) -> Path:
        """The file for a LoRA name: a relative name under the LoRA folder (with or without
        .safetensors; a bare file name also matches in a subfolder), or a path to a file."""
        name = name.strip()
        direct = Path(name).expanduser()
        if direct.suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterError(
                f"{direct.name}: {direct.suffix} files are pickles, which can run code when "
                "opened, so they are refused; use the .safetensors version of this LoRA", "lora")
        if direct.suffix.lower() == ".safetensors" and direct.is_absolute() and direct.is_file():
            return direct
        available = self.available_loras()
        key = name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name
        if key in available:
            return available[key]
        by_stem = [p for n, p in available.items() if n.rsplit("/", 1)[-1] == key]
        if len(by_stem) == 1:
            return by_stem[0]
        for suffix in PICKLE_SUFFIXES:
            if (self.lora_dir / (key + suffix)).is_file():
                raise AdapterError(
                    f"LoRA {name!r} is a {suffix} file, a pickle that can run code when opened, "
                    "so it is refused; use its .safetensors version", "lora")
        if len(by_stem) > 1:
            names = ", ".join(n for n in available if n.rsplit("/", 1)[-1] == key)
            raise AdapterError(f"LoRA name {name!r} is ambiguous; write one of: {names}", "lora")
        listing = ", ".join(available) if available else f"none (put .safetensors files in {self.lora_dir})"
        raise AdapterError(f"unknown LoRA {name!r}; available LoRAs: {listing}", "lora")

    def parse_prompt(self, prompt: str) -> tuple[str, list[tuple[str, float]]]:
        """parse_prompt_loras, then check every name exists (AdapterError lists the LoRAs)."""
        clean, loras = parse_prompt_loras(prompt)
        for name, _weight in loras:
            self.resolve_lora(name)
        return clean, loras

    def set_loras(self, loras: Iterable) -> None:
        """Make exactly these LoRAs active: [(name, weight)], [LoraSpec] or {name: weight}."""
        wanted = _normalise_loras(loras)
        paths = {name: self.resolve_lora(name) for name, _ in wanted}
        # A file replaced on disk (same name, new content) must be read again.
        for name, path in paths.items():
            entry = self._loras.get(name)
            if entry is not None and (entry.path != path or entry.stamp != _stamp(path)):
                self._delete_lora(name)
        # New LoRAs load before anything is removed, so a file that fails leaves the previous
        # job's LoRAs exactly as they were.
        previous = self._active
        for name, path in paths.items():
            if name not in self._loras:
                try:
                    self._load_lora(name, path)
                except AdapterError:
                    self._restore(previous)
                    raise
        for name in [n for n in self._loras if n not in paths]:
            self._delete_lora(name)
        if not wanted:
            if self._peft_touched and self._has_peft_layers():
                # Removes the LoRA layers themselves, so the modules are the base ones again.
                self.base.unload_lora_weights()
            self._loras.clear()
            self._active = None
            self._peft_touched = False
            return
        active = tuple((self._loras[name].adapter, float(weight)) for name, weight in wanted)
        if active != self._active:
            self.base.set_adapters([a for a, _ in active], adapter_weights=[w for _, w in active])
            self._active = active

    def _restore(self, previous) -> None:
        if previous and all(a in self._adapters_present() for a, _ in previous):
            self.base.set_adapters([a for a, _ in previous], adapter_weights=[w for _, w in previous])
            self._active = previous
        elif self._loras and self._active is None:
            # Loaded but never activated in this state: leave them all off until the next job.
            self.base.set_adapters([e.adapter for e in self._loras.values()],
                                   adapter_weights=[0.0] * len(self._loras))
            self._active = tuple((e.adapter, 0.0) for e in self._loras.values())

    def _has_peft_layers(self) -> bool:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for component in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(self.base, component, None)
            if module is not None and any(isinstance(m, BaseTunerLayer) for m in module.modules()):
                return True
        return False

    def _delete_lora(self, name: str) -> None:
        entry = self._loras.pop(name)
        self.base.delete_adapters([entry.adapter])
        self._active = None

    def _adapters_present(self) -> set[str]:
        try:
            lists = self.base.get_list_adapters()
        except Exception:  # noqa: BLE001 - no peft state at all
            return set()
        return {a for names in lists.values() for a in names}

    def _load_lora(self, name: str, path: Path) -> None:
        _check_lora_file(path)
        adapter = adapter_name(name)
        before = self._adapters_present()
        self.load_calls += 1
        self._peft_touched = True
        try:
            # Folder plus file name: the form every library version takes, offline too.
            self.base.load_lora_weights(str(path.parent), weight_name=path.name,
                                        adapter_name=adapter)
        except Exception as exc:  # noqa: BLE001 - any failure must leave the pipeline clean
            self._undo_lora(adapter, before)
            raise AdapterError(_lora_failure(path, exc, self.family), "lora") from exc
        if adapter not in self._adapters_present():
            self._undo_lora(adapter, before)
            raise AdapterError(f"{path.name} matched no layer of this model; it is probably a "
                               f"LoRA for another kind of model (this one is {_FAMILY[self.family]})",
                               "lora")
        self._loras[name] = _LoadedLora(adapter, path, _stamp(path))
        self._active = None

    def _undo_lora(self, adapter: str, before: set[str]) -> None:
        if adapter in self._adapters_present():
            try:
                self.base.delete_adapters([adapter])
            except Exception:  # noqa: BLE001
                pass
        if not before and self._has_peft_layers():
            # Nothing was loaded before: drop the (now empty) LoRA layers entirely.
            self.base.unload_lora_weights()
        # A failed load may have changed the active set; the next set_adapters restores it.
        self._active = None

    # -- IP-Adapter ----------------------------------------------------------------------
    def set_ip_adapter(self, spec: IPAdapterSpec | None) -> dict:
        """Load (once) or unload the IP-Adapter; returns the call kwargs it needs."""
        if spec is None:
            self.unload_ip_adapter()
            return {}
        if not 0.0 <= float(spec.scale) <= 1.0:
            raise AdapterError(f"IP-Adapter scale must be from 0 to 1 (got {spec.scale:g})",
                               "ip_adapter")
        key, weights, encoder_dir = self._locate_ip_adapter(spec)
        if self._cache.ip_key != key or not self._ip_processors_present():
            self._load_ip_adapter(key, weights, encoder_dir)
        image = spec.image
        scale = float(spec.scale) if image is not None else 0.0
        if image is None:
            # With an IP-Adapter loaded the UNet needs image embeddings on every call; a blank
            # image at scale 0 adds exactly nothing and avoids unloading and reloading it.
            from PIL import Image

            image = Image.new("RGB", (8, 8))
        else:
            image = _as_rgb(image, "ip_adapter")
        if scale != self._ip_scale:
            self.base.set_ip_adapter_scale(scale)
            self._ip_scale = scale
        return {"ip_adapter_image": image}

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapter (kept in memory, so turning it on again reads no file)."""
        if self._cache.ip_key is None:
            return
        self._library_unload_ip()
        self._cache.ip_key = None
        self._ip_scale = None

    def _library_unload_ip(self) -> None:
        base = self.base
        if self._ip_processors_present():
            self._plain_processors()
            base.unload_ip_adapter()
        else:
            # Something replaced the IP-Adapter's processors already (attention slicing does);
            # only its image projection and encoder are left to remove.
            base.unet.encoder_hid_proj = None
            base.unet.config.encoder_hid_dim_type = None
            base.register_modules(image_encoder=None)

    def _ip_processors_present(self) -> bool:
        # Attention slicing and other processor changes silently drop the IP-Adapter layers.
        return any("IPAdapter" in type(p).__name__ for p in self.base.unet.attn_processors.values())

    def _locate_ip_adapter(self, spec: IPAdapterSpec):
        """(cache key, weights file, image encoder folder) for a local folder or a hub id."""
        root = Path(spec.model).expanduser()
        if not root.exists():
            if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", spec.model):
                root = self._fetch_ip_adapter(spec)
                spec = IPAdapterSpec(spec.model, spec.image, spec.scale,
                                     spec.subfolder or ("sdxl_models" if self.family == "sdxl"
                                                        else "models"), spec.weight_name)
            else:
                raise AdapterError(f"no IP-Adapter folder at {spec.model}", "ip_adapter")
        if root.is_file():
            if root.suffix.lower() != ".safetensors":
                raise AdapterError(f"{root.name}: only .safetensors IP-Adapter weights are loaded "
                                   "(pickle files can run code when opened)", "ip_adapter")
            weights = root
        else:
            weights = self._pick_ip_weights(root, spec)
        encoder = None
        for candidate in (weights.parent / "image_encoder", root / "models" / "image_encoder",
                          weights.parent.parent / "models" / "image_encoder"):
            if (candidate / "config.json").is_file():
                encoder = candidate
                break
        if encoder is None:
            raise AdapterError(
                f"the IP-Adapter {spec.model} has no image encoder: put the CLIP vision encoder "
                f"(config.json and model.safetensors) in {weights.parent / 'image_encoder'}",
                "ip_adapter")
        stamp = _stamp(weights)
        return (str(weights.resolve()), stamp, str(encoder.resolve())), weights, encoder

    def _pick_ip_weights(self, root: Path, spec: IPAdapterSpec) -> Path:
        if spec.subfolder is not None:
            subfolders = [spec.subfolder]
        elif self.family == "sdxl":
            subfolders = ["sdxl_models", "models", ""]
        else:
            subfolders = ["models", ""]
        for sub in subfolders:
            folder = root / sub
            if not folder.is_dir():
                continue
            if spec.weight_name:
                path = folder / spec.weight_name
                if path.suffix.lower() in PICKLE_SUFFIXES:
                    raise AdapterError(f"{path.name} is a pickle file (it can run code when "
                                       "opened); use the .safetensors weights", "ip_adapter")
                if path.is_file():
                    return path
                continue
            files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
            if len(files) == 1:
                return files[0]
            if len(files) > 1:
                names = ", ".join(p.name for p in files)
                raise AdapterError(f"{folder} holds several IP-Adapters ({names}); choose one with "
                                   "weight_name", "ip_adapter")
        what = spec.weight_name or "an IP-Adapter .safetensors file"
        raise AdapterError(f"no {what} in {root} (looked in "
                           + ", ".join(str(root / s) for s in subfolders) + ")", "ip_adapter")

    def _fetch_ip_adapter(self, spec: IPAdapterSpec) -> Path:
        try:
            from huggingface_hub import snapshot_download

            sub = spec.subfolder or ("sdxl_models" if self.family == "sdxl" else "models")
            weight = spec.weight_name or ("ip-adapter_sdxl.safetensors" if self.family == "sdxl"
                                          else "ip-adapter_sd15.safetensors")
            return Path(snapshot_download(spec.model, allow_patterns=ip_adapter_files(sub, weight)))
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access
            raise AdapterError(
                f"could not get the IP-Adapter {spec.model!r} from the hub ({type(exc).__name__}); "
                "without a network connection download it beforehand and give its local folder "
                "(with models/image_encoder) instead", "ip_adapter") from None

    def _load_ip_adapter(self, key: tuple, weights: Path, encoder_dir: Path) -> None:
        import torch

        base = self.base
        if self._cache.ip_key is not None or self._ip_processors_present():
            self._library_unload_ip()
            self._cache.ip_key = None
        cached = self._cache
        state = cached.ip_state if cached.ip_state is not None and cached.ip_state[0] == key else None
        try:
            if state is None:
                state = (key, _read_ip_state(weights))
            if cached.ip_encoder is None or cached.ip_encoder[0] != key[2]:
                from transformers import CLIPVisionModelWithProjection

                if not any(Path(key[2]).glob("*.safetensors")):
                    raise AdapterError(
                        f"the image encoder in {encoder_dir} has no .safetensors weights (pickle "
                        ".bin files are refused: they can run code when opened)", "ip_adapter")
                encoder = CLIPVisionModelWithProjection.from_pretrained(
                    key[2], dtype=base.unet.dtype, local_files_only=True, use_safetensors=True)
                encoder = encoder.to(self.device).eval()
                cached.ip_encoder = (key[2], encoder)
            proj = state[1]["image_proj"].get("proj.weight")
            if proj is not None and proj.shape[1] != cached.ip_encoder[1].config.projection_dim:
                raise AdapterError(
                    f"the image encoder in {encoder_dir} gives {cached.ip_encoder[1].config.projection_dim}-"
                    f"wide embeddings but {weights.name} expects {proj.shape[1]}; use the encoder "
                    "that came with this IP-Adapter", "ip_adapter")
            # Registering the encoder first stops the loader from looking for one itself.
            base.register_modules(image_encoder=cached.ip_encoder[1])
            if getattr(base, "feature_extractor", None) is None:
                base.register_modules(feature_extractor=_clip_processor(cached.ip_encoder[1]))
            if self._plain_processors():
                self.notices.append(SLICING_WITH_IP_ADAPTER)
            with torch.no_grad():
                base.load_ip_adapter({k: dict(v) for k, v in state[1].items()},
                                     subfolder="", weight_name="")
        except AdapterError:
            self._clean_ip_failure()
            raise
        except Exception as exc:  # noqa: BLE001 - leave the pipeline as it was
            self._clean_ip_failure()
            if "shape" in str(exc) or "size mismatch" in str(exc):
                message = (f"the IP-Adapter {weights.name} does not fit this model: its layer sizes "
                           f"differ, so it was made for another kind of model (this one is "
                           f"{_FAMILY[self.family]})")
            else:
                message = (f"could not load the IP-Adapter {weights.name} ({_short(exc)}); is it "
                           f"made for {_FAMILY[self.family]} models?")
            raise AdapterError(message, "ip_adapter") from exc
        cached.ip_state = state
        cached.ip_key = key
        self._ip_scale = None

    def _clean_ip_failure(self) -> None:
        try:
            self._library_unload_ip()
        except Exception:  # noqa: BLE001 - best effort; the processors are reset below anyway
            self._plain_processors(everything=True)
        self.base.register_modules(image_encoder=None)
        self._cache.ip_key = None
        self._ip_scale = None

    # -- ControlNet ----------------------------------------------------------------------
    def _controlnet_model(self, location: str):
        path = Path(location).expanduser()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterError(f"{path.name}: pickle checkpoints can run code when opened, so they "
                               "are refused; use the .safetensors version", "controlnet")
        if not path.exists():
            raise AdapterError(f"no ControlNet model at {location} (give a diffusers folder with "
                               "config.json, or a .safetensors file)", "controlnet")
        key = str(path.resolve())
        stamp = _stamp(path if path.is_file() else _first_weights(path) or path)
        hit = self._cache.controlnets.pop(key, None)
        if hit is not None and hit[0] == stamp:
            self._cache.controlnets[key] = hit  # most recently used last
            return key, hit[1]
        dtype, device = self.base.unet.dtype, self.device
        try:
            model = _read_controlnet(path, self.base.unet, dtype)
        except AdapterError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise AdapterError(f"could not load the ControlNet {path.name} ({_short(exc)}); is it "
                               f"made for {_FAMILY[self.family]} models?", "controlnet") from exc
        model = model.to(device=device, dtype=dtype).eval()
        self._cache.controlnets[key] = (stamp, model)
        while len(self._cache.controlnets) > max(self.max_controlnets, 1):
            dropped = next(iter(self._cache.controlnets))
            del self._cache.controlnets[dropped]
            self._pipes = {k: v for k, v in self._pipes.items() if dropped not in k[2]}
        return key, model

    # -- pipelines -----------------------------------------------------------------------
    def pipeline(self, mode: str = "img2img", pag: bool = False, controlnets: tuple = ()):
        """The pipeline for a mode, sharing the base modules; built once and cached.

        controlnets: ((key, model), ...) as returned by the internal loader.
        """
        key = (mode, bool(pag), tuple(k for k, _ in controlnets))
        if key == ("img2img", False, ()):
            return self.base
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = self._build(mode, pag, controlnets)
            self._pipes[key] = pipe
        self._sync(pipe)
        return pipe

    def pag_limit(self, mode: str = "img2img", *, controlnets: bool = False,
                  latent_input: bool = False) -> str:
        """Why PAG cannot run with this combination of mode and adapters ('' when it can).

        The engine asks before a job so that it can turn PAG off, say so and write an honest
        infotext; prepare() refuses such a job with the same reason.
        """
        if self.inpainting_model:
            mode = "inpaint"  # img2img runs as inpainting of the whole picture (see prepare)
        if self.family == "sdxl" and mode == "inpaint" and controlnets:
            return ("for SDXL models PAG cannot be combined with ControlNet when inpainting "
                    "(the library has no such pipeline)")
        if self.family != "sdxl" and mode == "img2img" and controlnets and latent_input:
            return (f"on {_FAMILY[self.family]} models PAG with ControlNet starts from a picture, "
                    "not from latents")
        return ""

    def _build(self, mode: str, pag: bool, controlnets: tuple):
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        auto = AutoPipelineForInpainting if mode == "inpaint" else AutoPipelineForImage2Image
        kwargs: dict[str, Any] = {}
        if pag:
            kwargs["enable_pag"] = True
        if controlnets:
            models = [m for _, m in controlnets]
            kwargs["controlnet"] = models[0] if len(models) == 1 else MultiControlNetModel(models)
        try:
            pipe = auto.from_pipe(self.base, **kwargs)
        except ValueError as exc:
            parts = [p for p, on in (("PAG", pag), ("ControlNet", controlnets)) if on]
            raise AdapterError(
                f"{' with '.join(parts) or 'this mode'} is not available for {mode} on "
                f"{_FAMILY[self.family]} models in this diffusers version ({_short(exc)}); turn "
                f"{' or '.join(parts) or 'it'} off", "pag" if pag else "controlnet") from None
        for name in ("unet", "vae", "text_encoder"):
            # from_pipe must share the resident modules; a copy would double the memory.
            assert getattr(pipe, name) is getattr(self.base, name), name
        config = getattr(self.base, "_progress_bar_config", None)
        if config is not None:
            pipe.set_progress_bar_config(**config)
        if mode == "inpaint":
            _pass_output_type_to_check(pipe)
        return pipe

    def _sync(self, pipe) -> None:
        """Give a cached pipeline the base's current components (the engine swaps schedulers,
        the IP-Adapter adds an image encoder) so both always run the same parts."""
        mine = pipe.components
        updates = {name: module for name, module in self.base.components.items()
                   if name in mine and mine[name] is not module}
        if updates:
            pipe.register_modules(**updates)

    def _repair(self) -> None:
        """Undo what a failed run may have left in the shared UNet (PAG swaps in its own
        attention processors for the run and puts them back only when the run finishes)."""
        self._plain_processors(lambda p: type(p).__name__.startswith("PAG"))

    def _plain_processors(self, which=None, everything: bool = False) -> bool:
        """Replace attention processors by the default one; returns whether any was replaced.

        By default those the IP-Adapter loader and unloader cannot rebuild (they recreate each
        processor from its class without arguments, which fails for sliced attention)."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        def needs_args(p) -> bool:
            if "IPAdapter" in type(p).__name__:
                return False
            try:
                type(p)()
            except TypeError:
                return True
            return False

        which = which or (lambda p: True if everything else needs_args(p))
        procs = self.base.unet.attn_processors
        if not any(which(p) for p in procs.values()):
            return False
        self.base.unet.set_attn_processor(
            {n: (AttnProcessor2_0() if which(p) else p) for n, p in procs.items()})
        return True

    # -- one job -------------------------------------------------------------------------
    def prepare(self, mode: str = "img2img", *, image=None, size: tuple[int, int] | None = None,
                loras: Iterable = (), ip_adapter: IPAdapterSpec | str | None = None,
                ip_image=None, ip_scale: float = 0.5, pag_scale: float = 0.0,
                pag_adaptive_scale: float = 0.0, controlnets: Iterable[ControlNetSpec] = (),
                mask=None, mask_blur: float = 4, inpaint_full_res: bool = False,
                padding: int = 32, masked_content: str = "original", seed: int = 0,
                output_type: str = "pil", strength: float | None = None) -> tuple[Any, dict]:
        """Set the adapters for one job; returns (pipeline, kwargs) for the pipeline call.

        mode: 'img2img' or 'inpaint' (needs `mask`).
        image: the init image (PIL, a list of PIL images, or a latent tensor (N, 4, h/8, w/8)).
            When given it is checked, possibly changed (masked content) and returned in
            kwargs['image']: then do not pass `image=` to the pipeline yourself.
        size: the requested (width, height); checks latent input and sizes control images when
            `image` is not given.
        loras: [(name, weight)] / [LoraSpec] / {name: weight}; an empty list unloads them all.
        ip_adapter: IPAdapterSpec, or a folder / hub id with ip_image and ip_scale; None unloads.
        pag_scale: perturbed-attention guidance, 0 = off (the plain pipeline runs).
        controlnets: ControlNetSpec list; several run together (their effects add up).
        mask, mask_blur, inpaint_full_res, padding, masked_content: inpainting (see module doc).
        seed: seeds the noise of masked content 'latent noise'.
        output_type: 'pil', 'np' or 'latent'; returned in kwargs (inpaint-only-masked needs PIL).
        strength: the job's denoising strength (0-1), passed to the pipeline call too; at 1 an
            img2img job ignores the picture. None: the image is used as given.
        """
        if mode not in MODES:
            raise AdapterError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}", "mode")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise AdapterError(f"output type must be pil, np, pt or latent (got {output_type!r})",
                               "output_type")
        self._repair()
        self.notices = []
        kwargs: dict[str, Any] = {"output_type": output_type}
        # Inputs are checked and the pipeline is built before any LoRA or IP-Adapter changes, so
        # a job that fails on a bad mask or an unsupported combination changes nothing.
        image_size, latent_input = self._check_image(image, size)
        if pag_scale < 0:
            raise AdapterError(f"PAG scale must be 0 (off) or more (got {pag_scale:g})", "pag")
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise AdapterError(f"strength must be from 0 to 1 (got {strength:g})", "strength")
        pag = pag_scale > 0
        specs = list(controlnets or ())
        if pag:
            limit = self.pag_limit(mode, controlnets=bool(specs), latent_input=latent_input)
            if limit:
                raise AdapterError(f"PAG cannot run here: {limit}; set the PAG scale to 0", "pag")
            kwargs["pag_scale"] = float(pag_scale)
            kwargs["pag_adaptive_scale"] = float(pag_adaptive_scale)
        if specs:
            kwargs.update(self._controlnet_kwargs(specs, image_size))
        if mode == "img2img" and mask is not None:
            raise AdapterError("a mask was given but the mode is img2img; choose inpaint to use "
                               "it", "mask")
        # SD 1.x and 2.x have no PAG ControlNet img2img pipeline; their PAG ControlNet inpaint
        # pipeline with a mask over the whole picture is the same computation (nothing is
        # blended back).
        # An inpainting model has no img2img pipeline at all (its UNet also reads a mask and the
        # masked picture): img2img runs as inpainting of the whole picture.
        pipe_mode = "inpaint" if mode == "img2img" and (
            self.inpainting_model or (pag and specs and self.family != "sdxl")) else mode
        if mode == "img2img" and self.inpainting_model:
            if latent_input:
                raise AdapterError("this is an inpainting model, which starts from a picture, "
                                   "not from latents: give the init image", "image")
            self.notices.append("an inpainting model: img2img ran as inpainting of the whole "
                                "picture")
        if mode == "inpaint":
            if latent_input:
                raise AdapterError("inpainting needs the picture itself, not latents: give the "
                                   "init image (also at strength 1)", "image")
            kwargs.update(self._inpaint_kwargs(image, image_size, mask, mask_blur,
                                               inpaint_full_res, padding, masked_content, seed,
                                               output_type))
        elif pipe_mode == "inpaint":
            from PIL import Image

            kwargs["mask_image"] = Image.new("L", image_size, 255)
            kwargs["image"] = image
        elif strength is not None and strength >= 1.0 and image is not None and not latent_input:
            # Strength 1 must ignore the picture entirely; the img2img noise schedule never quite
            # reaches pure noise, so it starts from empty latents instead of the encoded image.
            # (Inpainting pipelines start from pure noise at strength 1 by themselves.)
            kwargs["image"] = self._empty_latents(image_size, len(image)
                                                  if isinstance(image, (list, tuple)) else 1)
        elif image is not None:
            kwargs["image"] = image
        loaded = tuple(self._controlnet_model(s.model) for s in specs)
        pipe = self.pipeline(pipe_mode, pag, loaded)
        if image_size is not None and _takes(pipe, "height"):
            # Pipelines that take a size fall back to the UNet's default (512x512 for SD 1.5)
            # when it is not given: every job states its own ("only masked" repaints the crop
            # at this size too).
            kwargs.setdefault("width", image_size[0])
            kwargs.setdefault("height", image_size[1])

        self.set_loras(loras)
        if isinstance(ip_adapter, (str, Path)):
            ip_adapter = IPAdapterSpec(str(ip_adapter), image=ip_image, scale=ip_scale)
        kwargs.update(self.set_ip_adapter(ip_adapter))
        # Loading an IP-Adapter registers an image encoder on the base pipeline.
        if pipe is not self.base:
            self._sync(pipe)
        return pipe, kwargs

    def unload_all(self) -> None:
        """Back to the bare base pipeline (LoRAs and IP-Adapter removed, caches kept)."""
        self._repair()
        self.set_loras(())
        self.unload_ip_adapter()

    # -- helpers for prepare -------------------------------------------------------------
    def _check_image(self, image, size):
        """(pixel size of the job or None, whether the input is latents)."""
        import torch
        from PIL import Image

        scale = getattr(self.base, "vae_scale_factor", 8)
        if image is None:
            return (tuple(size) if size else None), False
        if isinstance(image, torch.Tensor):
            channels = self.base.vae.config.latent_channels
            check_latents(image, channels=channels, size=size, scale_factor=scale)
            return (image.shape[3] * scale, image.shape[2] * scale), True
        images = image if isinstance(image, (list, tuple)) else [image]
        if not images or not all(isinstance(i, Image.Image) for i in images):
            raise AdapterError("the init image must be a PIL image (or a latent tensor)", "image")
        sizes = {i.size for i in images}
        if len(sizes) > 1:
            raise AdapterError("the init images of one batch must all have the same size", "image")
        return images[0].size, False

    def _empty_latents(self, size, count: int):
        import torch

        pipe = self.base
        f = pipe.vae_scale_factor
        return torch.zeros(count, pipe.vae.config.latent_channels, size[1] // f, size[0] // f,
                           device=self.device, dtype=pipe.vae.dtype)

    def _controlnet_kwargs(self, specs: list[ControlNetSpec], size) -> dict:
        from .controlnet_images import DETECTED, PREPROCESSORS, control_image

        images, scales, starts, ends = [], [], [], []
        for n, spec in enumerate(specs, 1):
            label = f"ControlNet {n} ({Path(spec.model).name})" if len(specs) > 1 else "ControlNet"
            if spec.image is None:
                raise AdapterError(f"{label} has no control image: give one (or an init image "
                                   "with preprocessor 'canny' to trace its edges)", "controlnet")
            if spec.preprocessor not in PREPROCESSORS:
                raise AdapterError(f"{label}: unknown preprocessor {spec.preprocessor!r}; use one "
                                   "of " + ", ".join(PREPROCESSORS), "controlnet")
            if not 0.0 <= spec.scale <= 2.0:
                raise AdapterError(f"{label}: conditioning scale must be from 0 to 2 (got "
                                   f"{spec.scale:g})", "controlnet")
            if not 0.0 <= spec.start < spec.end <= 1.0:
                raise AdapterError(f"{label}: guidance start/end must satisfy 0 <= start < end <= "
                                   f"1 (got {spec.start:g} / {spec.end:g})", "controlnet")
            detect = None
            if spec.preprocessor in DETECTED:
                if not spec.detector:
                    raise AdapterError(f"{label}: preprocessor {spec.preprocessor!r} needs its "
                                       "detector model folder", "controlnet")
                detect = functools.partial(self.detectors.control_map, spec.detector)
            try:
                picture = control_image(_as_rgb(spec.image, "controlnet"), spec.preprocessor,
                                        size, spec.low, spec.high, detect)
            except ValueError as exc:
                raise AdapterError(f"{label}: {exc}", "controlnet") from None
            images.append(picture)
            scales.append(float(spec.scale))
            starts.append(float(spec.start))
            ends.append(float(spec.end))
        if len(specs) == 1:
            return {"control_image": images[0], "controlnet_conditioning_scale": scales[0],
                    "control_guidance_start": starts[0], "control_guidance_end": ends[0]}
        return {"control_image": images, "controlnet_conditioning_scale": scales,
                "control_guidance_start": starts, "control_guidance_end": ends}

    def _inpaint_kwargs(self, image, size, mask, blur, full_res, padding, content, seed,
                        output_type) -> dict:
        import numpy as np

        if mask is None:
            raise AdapterError("inpainting needs a mask: paint the area to repaint in white",
                               "mask")
        if content not in MASKED_CONTENT:
            raise AdapterError(f"masked content must be one of: {', '.join(MASKED_CONTENT)} (got "
                               f"{content!r})", "masked_content")
        if blur < 0 or blur > 64:
            raise AdapterError(f"mask blur must be from 0 to 64 px (got {blur:g})", "mask_blur")
        mask_l = mask_to_l(mask)
        if size is not None and mask_l.size != tuple(size):
            raise AdapterError(
                f"the mask is {mask_l.size[0]}x{mask_l.size[1]} but the image is "
                f"{size[0]}x{size[1]}; draw the mask on the same picture (or resize it to match)",
                "mask")
        if np.asarray(mask_l).max() < 128:
            raise AdapterError("the mask is empty: paint the area to repaint in white", "mask")
        mask_l = blur_mask(mask_l, blur)
        kwargs: dict[str, Any] = {"mask_image": mask_l}
        if full_res:
            if output_type != "pil":
                raise AdapterError("'inpaint only masked' pastes the result into the picture, "
                                   "which needs the PIL output type", "inpaint_full_res")
            if not 0 <= padding <= 256:
                raise AdapterError(f"padding must be from 0 to 256 px (got {padding})", "padding")
            kwargs["padding_mask_crop"] = int(padding)
        if image is None:
            if content != "original":
                raise AdapterError(f"masked content {content!r} needs the init image passed to "
                                   "prepare", "masked_content")
            return kwargs
        # The pipeline pastes the crop back onto a single picture; a batch of the same picture
        # is one image repeated, which it handles from the prompt count.
        if isinstance(image, (list, tuple)):
            if full_res and any(i is not image[0] for i in image):
                raise AdapterError("'inpaint only masked' takes one init image per job", "image")
            if all(i is image[0] for i in image):
                image = image[0]
        if content == "fill":
            image = ([fill_masked(i, mask_l) for i in image] if isinstance(image, (list, tuple))
                     else fill_masked(image, mask_l))
        elif content in ("latent noise", "latent nothing"):
            if self.base.unet.config.in_channels != 4:
                raise AdapterError(
                    f"masked content {content!r} works with standard models only; an inpainting "
                    "model already sees the hole: use 'original' or 'fill'", "masked_content")
            if full_res:
                raise AdapterError(f"masked content {content!r} cannot be combined with 'inpaint "
                                   "only masked'; use 'original' or 'fill' there", "masked_content")
            latents = self._masked_latents(image, mask_l, content, seed)
            kwargs["masked_image_latents"] = latents
            kwargs["height"], kwargs["width"] = size[1], size[0]
            image = latents
        kwargs["image"] = image
        return kwargs

    def _masked_latents(self, image, mask, content: str, seed: int):
        """The init latents with the masked area replaced by noise or zeros."""
        import numpy as np
        import torch

        pipe = self.base
        vae = pipe.vae
        images = image if isinstance(image, (list, tuple)) else [image]
        pixels = pipe.image_processor.preprocess(images).to(device=self.device, dtype=vae.dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        small = mask.resize((latents.shape[3], latents.shape[2]), resample=2)
        hole = torch.from_numpy((np.asarray(small, dtype=np.float32) / 255.0 >= 0.5)
                                .astype(np.float32))
        hole = hole.to(latents.device, latents.dtype)[None, None]
        if content == "latent noise":
            generator = torch.Generator("cpu").manual_seed(int(seed))
            fill = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        else:
            fill = torch.zeros_like(latents)
        return latents * (1 - hole) + fill * hole


def _normalise_loras(loras) -> list[tuple[str, float]]:
    if loras is None:
        return []
    if isinstance(loras, dict):
        loras = list(loras.items())
    out: dict[str, float] = {}
    for item in loras:
        if isinstance(item, LoraSpec):
            name, weight = item.name, item.weight
        elif isinstance(item, str):
            name, weight = item, 1.0
        else:
            name, weight = item
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise AdapterError(f"LoRA {name!r}: the weight must be a number (got {weight!r})",
                               "lora") from None
        if not LORA_MIN <= weight <= LORA_MAX:
            raise AdapterError(f"LoRA {name!r}: the weight must be from {LORA_MIN:g} to "
                               f"{LORA_MAX:g} (got {weight:g})", "lora")
        out[str(name).strip()] = weight
    return list(out.items())


def _pass_output_type_to_check(pipe) -> None:
    """Let 'inpaint only masked' through the input check of pipelines that forget to give it the
    output type (the SD 1.x PAG inpaint pipeline passes None, which the crop check refuses).

    prepare() only asks for the crop with PIL output, so a missing output type means PIL.
    """
    import inspect

    check = pipe.check_inputs
    signature = inspect.signature(check)
    if "output_type" not in signature.parameters:
        return

    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("output_type") is None and \
                bound.arguments.get("padding_mask_crop") is not None:
            bound.arguments["output_type"] = "pil"
        return check(*bound.args, **bound.kwargs)

    pipe.check_inputs = checked


def _takes(pipe, name: str) -> bool:
    """Whether the pipeline's call has the keyword argument `name`."""
    import inspect

    return name in inspect.signature(type(pipe).__call__).parameters


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _first_weights(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.safetensors"))
    return files[0] if files else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _as_rgb(image, field: str):
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise AdapterError(f"the {field.replace('_', ' ')} image must be a picture", field)
    return image.convert("RGB")


def _check_lora_file(path: Path) -> None:
    """Refuse files that are not readable safetensors LoRAs before touching the pipeline."""
    from safetensors import SafetensorError, safe_open

    if path.suffix.lower() != ".safetensors":
        raise AdapterError(f"{path.name}: only .safetensors LoRAs are loaded", "lora")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path.name} is damaged or not a safetensors file ({_short(exc)}); "
                           "download it again", "lora") from None
    if not keys:
        raise AdapterError(f"{path.name} is empty (no weights inside)", "lora")
    if not any(_LORA_KEY.search(k) for k in keys):
        raise AdapterError(
            f"{path.name} is not a LoRA (none of its {len(keys)} weights is a LoRA weight); "
            "full checkpoints belong in models/Stable-diffusion", "lora")


def _lora_failure(path: Path, exc: BaseException, family: str) -> str:
    text = str(exc)
    if "size mismatch" in text or "shape" in text.lower():
        return (f"{path.name} does not fit this model: its layer sizes differ, so it was made for "
                f"another kind of model (this one is {_FAMILY[family]}); pick a LoRA trained for "
                f"{_FAMILY[family]}")
    if "Target modules" in text or "not found in the base model" in text:
        return (f"{path.name} names layers this model does not have; it is probably a LoRA for "
                f"another kind of model (this one is {_FAMILY[family]})")
    return f"could not load the LoRA {path.name}: {_short(exc)}"


def _read_ip_state(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    state: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                group, _, rest = key.partition(".")
                if group in state:
                    state[group][rest] = f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path.name} is damaged or not a safetensors file ({_short(exc)})",
                           "ip_adapter") from None
    if not state["image_proj"] or not state["ip_adapter"]:
        raise AdapterError(f"{path.name} is not an IP-Adapter (it lacks image_proj.* and "
                           "ip_adapter.* weights)", "ip_adapter")
    return state


def ip_adapter_files(subfolder: str, weight_name: str) -> list[str]:
    """What is fetched of a hub IP-Adapter: its weights and its image encoder's config and
    safetensors weights; never a pickle (.bin), which can run code when opened."""
    encoders = [f"{subfolder}/image_encoder", "models/image_encoder"]
    return [f"{subfolder}/{weight_name}"] + [f"{folder}/*.{kind}" for folder in encoders
                                             for kind in ("json", "safetensors")]


def _clip_processor(encoder):
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


def controlnet_config(unet) -> dict:
    """A ControlNet config matching a UNet (what training from that UNet starts with)."""
    cfg = unet.config
    keys = ("encoder_hid_dim", "addition_embed_type", "addition_time_embed_dim",
            "transformer_layers_per_block", "flip_sin_to_cos", "freq_shift", "down_block_types",
            "only_cross_attention", "block_out_channels", "layers_per_block",
            "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups",
            "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
            "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
            "resnet_time_scale_shift", "projection_class_embeddings_input_dim", "mid_block_type")
    out = {k: cfg[k] for k in keys if k in cfg}
    # An IP-Adapter rewrites the UNet's encoder_hid_dim_type; ControlNets never carry it, and
    # an inpainting UNet's 9 input channels are 4 latent ones for the ControlNet.
    hid = cfg.get("encoder_hid_dim_type")
    out["encoder_hid_dim_type"] = None if hid == "ip_image_proj" else hid
    out["in_channels"] = 4
    return out


def _read_controlnet(path: Path, unet, dtype):
    """A ControlNetModel from a diffusers folder or a single .safetensors file."""
    from diffusers import ControlNetModel

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AdapterError(f"{path} has no config.json; a ControlNet folder needs config.json "
                               "and diffusion_pytorch_model.safetensors", "controlnet")
        if _first_weights(path) is None:
            raise AdapterError(f"{path} has no .safetensors weights (pickle .bin files are "
                               "refused: they can run code when opened)", "controlnet")
        return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=True,
                                               local_files_only=True)
    if path.suffix.lower() != ".safetensors":
        raise AdapterError(f"{path.name}: a ControlNet file must be .safetensors", "controlnet")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path.name} is damaged or not a safetensors file ({_short(exc)})",
                           "controlnet") from None
    sidecar = path.with_suffix(".json")
    original = any(k.startswith(("control_model.", "input_hint_block.", "zero_convs."))
                   for k in state)
    if "controlnet_cond_embedding.conv_in.weight" in state or original:
        # A file holds no config: the one beside it, else the one training from this UNet
        # starts with.
        config = json.loads(sidecar.read_text()) if sidecar.is_file() else controlnet_config(unet)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        if original:
            state = _controlnet_from_original(state, config)
        model = ControlNetModel.from_config(config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise AdapterError(
                f"{path.name} does not fit this model ({_short(exc)}); it was made for another "
                "kind of model, or put its config.json next to it as "
                f"{sidecar.name}", "controlnet") from None
        return model
    raise AdapterError(f"{path.name} is not a ControlNet (no ControlNet weights inside)",
                       "controlnet")


def _controlnet_from_original(state: dict, config: dict) -> dict:
    """Original-layout ControlNet weights under diffusers names, by the library's converter.

    The converter leaves out SDXL's added time and text embedding (`label_emb`), although the
    library's own name table lists it; those weights are renamed here by that table.
    """
    from diffusers.loaders.single_file_utils import (DIFFUSERS_TO_LDM_MAPPING,
                                                     convert_controlnet_checkpoint)

    converted = convert_controlnet_checkpoint(state, config)
    prefix = "control_model." if any(k.startswith("control_model.") for k in state) else ""
    names = DIFFUSERS_TO_LDM_MAPPING["controlnet"]
    for kind in ("class_embed_type", "addition_embed_type"):
        if config.get(kind):
            for new, old in names[kind].items():
                if prefix + old in state and new not in converted:
                    converted[new] = state[prefix + old]
    # Keys the converter could not place come back as None.
    return {k: v for k, v in converted.items() if v is not None}
