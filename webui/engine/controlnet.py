"""ControlNet: the control maps a ControlNet sees (canny edges made without any model weights,
and the dispatch to the depth and pose detectors of detectors.py, which need the artist's
models), the ControlNet models (a diffusers folder or a single .safetensors file, in diffusers
or the original layout) and the ControlNets kept loaded for one pipeline (`ControlNets`).

Canny is OpenCV's `cv2.Canny` with its defaults (3x3 Sobel aperture, the L1 gradient norm
|gx| + |gy|), run on the RGB picture as the ControlNet canny models' training data was made:
the L2 variant finds several times fewer edges at the same thresholds, so the models would see
sparser maps than they learned from. The usual 100 / 200 pair is the default; lower them for
more edges.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import (DIFFUSERS_TO_LDM_MAPPING,
                                                 convert_controlnet_checkpoint)
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from .adapter_inputs import AdapterError, as_rgb, short, stamp
from .detectors import Detectors
from .models import FAMILY_LABELS as _FAMILY, refuse_pickle


# -- control maps ----------------------------------------------------------------------------

CANNY_LOW = 100
CANNY_HIGH = 200


def _rgb(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        return np.ascontiguousarray(array.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise TypeError("the control image must be a PIL image or a NumPy array")
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels count as black, as they show in a mask editor.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def canny_edges(image, low: float = CANNY_LOW, high: float = CANNY_HIGH,
                sigma: float = 0.0) -> np.ndarray:
    """A boolean edge map (H, W): cv2.Canny with its defaults. sigma > 0 blurs first, which
    drops edges from fine noise."""
    import cv2  # about 0.15 s of imports: paid only when a canny map is drawn

    if low < 0 or high < 0:
        raise ValueError("Canny thresholds must be 0 or more")
    if low > high:
        raise ValueError(f"the low Canny threshold ({low:g}) must not exceed the high one ({high:g})")
    pixels = _rgb(image)
    if sigma > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), sigma)
    return cv2.Canny(pixels, float(low), float(high)) > 0


def canny(image, low: float = CANNY_LOW, high: float = CANNY_HIGH, sigma: float = 0.0):
    """The Canny edge map as an RGB PIL image: white edges on black, the ControlNet convention."""
    edges = canny_edges(image, low, high, sigma).astype(np.uint8) * 255
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


PREPROCESSORS = ("none", "canny", "depth", "pose")
# Preprocessors that need a detector model (see detectors.py).
DETECTED = ("depth", "pose")


def control_image(image, preprocessor: str = "none", size: tuple[int, int] | None = None,
                  low: float = CANNY_LOW, high: float = CANNY_HIGH, detect=None):
    """The image a ControlNet sees: optionally preprocessed, RGB, resized to `size` (w, h).

    detect: for 'depth' and 'pose', a callable (kind, picture) -> map, the detector model that
    draws it (Detectors.control_map bound to a model folder).
    """
    if preprocessor not in PREPROCESSORS:
        raise ValueError(f"unknown ControlNet preprocessor {preprocessor!r}; use one of "
                         + ", ".join(PREPROCESSORS))
    if preprocessor in DETECTED and detect is None:
        raise ValueError(f"preprocessor {preprocessor!r} needs a detector model")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        # Resize before edge detection, so the edges are one pixel thin at the size the model sees.
        image = image.resize(tuple(size), Image.BICUBIC)
    if preprocessor == "canny":
        image = canny(image, low, high)
    elif preprocessor in DETECTED:
        image = detect(preprocessor, image)
    return image


# -- models ----------------------------------------------------------------------------------


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


# -- the ControlNets of one pipeline ---------------------------------------------------------


class ControlNets:
    """The ControlNet models kept loaded for one base pipeline, and the call arguments for a job.

    device: where the models go (where the pipeline computes). detectors: the depth / pose
    detector cache that draws the control maps. max_models: models kept between jobs. on_drop:
    called with the cache key of each model dropped, so that pipelines built with it go too.
    """

    def __init__(self, base_pipe, device: str, family: str, detectors: Detectors,
                 max_models: int = 3, on_drop: Callable[[str], None] = lambda key: None):
        self.base = base_pipe
        self.device = device
        self.family = family
        self.detectors = detectors
        self.max_models = max_models
        self.on_drop = on_drop
        # Kept between jobs so that turning a ControlNet off and on again reads no file.
        self._models: dict[str, tuple] = {}  # path -> (stamp, model), most recently used last

    def model(self, location: str):
        """(cache key, ControlNetModel) for a diffusers folder or a .safetensors file, loaded
        once and kept while the file is unchanged (the least recently used dropped first)."""
        path = Path(location).expanduser()
        refuse_pickle(path, lambda text: AdapterError(text, "controlnet"))
        if not path.exists():
            raise AdapterError(f"no ControlNet model at {location} (give a diffusers folder with "
                               "config.json, or a .safetensors file)", "controlnet")
        key = str(path.resolve())
        now = stamp(path if path.is_file() else first_weights(path) or path)
        hit = self._models.pop(key, None)
        if hit is not None and hit[0] == now:
            self._models[key] = hit  # most recently used last
            return key, hit[1]
        dtype, device = self.base.unet.dtype, self.device
        try:
            model = read_controlnet(path, self.base.unet, dtype)
        except AdapterError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise AdapterError(f"could not load the ControlNet {path.name} ({short(exc)}); is it "
                               f"made for {_FAMILY[self.family]} models?", "controlnet") from exc
        model = model.to(device=device, dtype=dtype).eval()
        self._models[key] = (now, model)
        while len(self._models) > max(self.max_models, 1):
            dropped = next(iter(self._models))
            del self._models[dropped]
            self.on_drop(dropped)
        return key, model

    def call_kwargs(self, specs: list[ControlNetSpec], size) -> dict:
        """The pipeline call's control images (each preprocessed and at `size`), scales and
        guidance spans; one ControlNet gets single values, several get lists."""
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
                picture = control_image(as_rgb(spec.image, "controlnet"), spec.preprocessor,
                                        size, spec.low, spec.high, detect)
            except AdapterError:
                # A ValueError too, but already in the artist's words (a control image that is
                # no picture): not a preprocessing failure.
                raise
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


def first_weights(folder: Path) -> Path | None:
    """The first .safetensors file of a folder (by name), None when it holds none."""
    files = sorted(folder.glob("*.safetensors"))
    return files[0] if files else None


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


def read_controlnet(path: Path, unet, dtype):
    """A ControlNetModel from a diffusers folder or a single .safetensors file."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AdapterError(f"{path} has no config.json; a ControlNet folder needs config.json "
                               "and diffusion_pytorch_model.safetensors", "controlnet")
        if first_weights(path) is None:
            raise AdapterError(f"{path} has no .safetensors weights (pickle .bin files are "
                               "refused: they can run code when opened)", "controlnet")
        return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=True,
                                               local_files_only=True)
    if path.suffix.lower() != ".safetensors":
        raise AdapterError(f"{path.name}: a ControlNet file must be .safetensors", "controlnet")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path.name} is damaged or not a safetensors file ({short(exc)})",
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
                f"{path.name} does not fit this model ({short(exc)}); it was made for another "
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
