"""The IP-Adapter: its files (a local folder or a hub id, never a pickle), and loading it into
one pipeline together with its image encoder (`IPAdapter`).

Weights and encoder stay in memory after an unload, so turning it off and on again reads no
file; one that fails to load leaves none loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from huggingface_hub import snapshot_download
from PIL import Image
from safetensors import SafetensorError, safe_open
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .adapter_inputs import AdapterError, as_rgb, short, stamp
from .memory import SLICING_WITH_IP_ADAPTER
from .models import FAMILY_LABELS as _FAMILY, refuse_pickle


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


class IPAdapter:
    """The IP-Adapter of one base pipeline: at most one loaded, with its image encoder.

    device: where the image encoder goes (where the pipeline computes).
    family: the model family, which picks the hub subfolder and names a misfit in messages.
    """

    def __init__(self, base_pipe, device: str, family: str):
        self.base = base_pipe
        self.device = device
        self.family = family
        # Kept between jobs so that turning the IP-Adapter off and on again reads no file.
        self._key: tuple | None = None  # (weights path, stamp, encoder folder) loaded now
        self._state: tuple | None = None  # (key, weights read from that file)
        self._encoder: Any = None  # (encoder folder, CLIP vision model)
        self._scale: float | None = None  # last given to set_ip_adapter_scale

    def loaded(self) -> bool:
        return self._key is not None

    def apply(self, spec: IPAdapterSpec | None, notices: list[str]) -> dict:
        """Load (once) or unload the IP-Adapter; returns the call kwargs it needs. What the artist
        should know (attention slicing turned off) is added to `notices`."""
        if spec is None:
            self.unload()
            return {}
        if not 0.0 <= float(spec.scale) <= 1.0:
            raise AdapterError(f"IP-Adapter scale must be from 0 to 1 (got {spec.scale:g})",
                               "ip_adapter")
        key, weights, encoder_dir = self._locate(spec)
        if self._key != key or not self._processors_present():
            self._load(key, weights, encoder_dir, notices)
        image = spec.image
        scale = float(spec.scale) if image is not None else 0.0
        if image is None:
            # With an IP-Adapter loaded the UNet needs image embeddings on every call; a blank
            # image at scale 0 adds exactly nothing and avoids unloading and reloading it.
            image = Image.new("RGB", (8, 8))
        else:
            image = as_rgb(image, "ip_adapter")
        if scale != self._scale:
            self.base.set_ip_adapter_scale(scale)
            self._scale = scale
        return {"ip_adapter_image": image}

    def unload(self) -> None:
        """Remove the IP-Adapter (kept in memory, so turning it on again reads no file)."""
        if self._key is None:
            return
        self._library_unload()
        self._key = None
        self._scale = None

    def _library_unload(self) -> None:
        base = self.base
        if self._processors_present():
            plain_processors(base.unet)
            base.unload_ip_adapter()
        else:
            # Something replaced the IP-Adapter's processors already (attention slicing does);
            # only its image projection and encoder are left to remove.
            base.unet.encoder_hid_proj = None
            base.unet.config.encoder_hid_dim_type = None
            base.register_modules(image_encoder=None)

    def _processors_present(self) -> bool:
        # Attention slicing and other processor changes silently drop the IP-Adapter layers.
        return any("IPAdapter" in type(p).__name__ for p in self.base.unet.attn_processors.values())

    def _locate(self, spec: IPAdapterSpec):
        """(cache key, weights file, image encoder folder) for a local folder or a hub id."""
        root = Path(spec.model).expanduser()
        if not root.exists():
            if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", spec.model):
                root = self._fetch(spec)
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
            weights = self._pick_weights(root, spec)
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
        return (str(weights.resolve()), stamp(weights), str(encoder.resolve())), weights, encoder

    def _pick_weights(self, root: Path, spec: IPAdapterSpec) -> Path:
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
                refuse_pickle(path, lambda text: AdapterError(text, "ip_adapter"))
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

    def _fetch(self, spec: IPAdapterSpec) -> Path:
        try:
            sub = spec.subfolder or ("sdxl_models" if self.family == "sdxl" else "models")
            weight = spec.weight_name or ("ip-adapter_sdxl.safetensors" if self.family == "sdxl"
                                          else "ip-adapter_sd15.safetensors")
            return Path(snapshot_download(spec.model, allow_patterns=ip_adapter_files(sub, weight)))
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access
            raise AdapterError(
                f"could not get the IP-Adapter {spec.model!r} from the hub ({type(exc).__name__}); "
                "without a network connection download it beforehand and give its local folder "
                "(with models/image_encoder) instead", "ip_adapter") from None

    def _load(self, key: tuple, weights: Path, encoder_dir: Path, notices: list[str]) -> None:
        base = self.base
        if self._key is not None or self._processors_present():
            self._library_unload()
            self._key = None
        state = self._state if self._state is not None and self._state[0] == key else None
        try:
            if state is None:
                state = (key, _read_ip_state(weights))
            if self._encoder is None or self._encoder[0] != key[2]:
                if not any(Path(key[2]).glob("*.safetensors")):
                    raise AdapterError(
                        f"the image encoder in {encoder_dir} has no .safetensors weights (pickle "
                        ".bin files are refused: they can run code when opened)", "ip_adapter")
                encoder = CLIPVisionModelWithProjection.from_pretrained(
                    key[2], dtype=base.unet.dtype, local_files_only=True, use_safetensors=True)
                encoder = encoder.to(self.device).eval()
                self._encoder = (key[2], encoder)
            proj = state[1]["image_proj"].get("proj.weight")
            if proj is not None and proj.shape[1] != self._encoder[1].config.projection_dim:
                width = self._encoder[1].config.projection_dim
                raise AdapterError(
                    f"the image encoder in {encoder_dir} gives {width}-"
                    f"wide embeddings but {weights.name} expects {proj.shape[1]}; use the encoder "
                    "that came with this IP-Adapter", "ip_adapter")
            # Registering the encoder first stops the loader from looking for one itself.
            base.register_modules(image_encoder=self._encoder[1])
            if getattr(base, "feature_extractor", None) is None:
                base.register_modules(feature_extractor=_clip_processor(self._encoder[1]))
            if plain_processors(self.base.unet):
                notices.append(SLICING_WITH_IP_ADAPTER)
            with torch.no_grad():
                base.load_ip_adapter({k: dict(v) for k, v in state[1].items()},
                                     subfolder="", weight_name="")
        except AdapterError:
            self._clean_failure()
            raise
        except Exception as exc:  # noqa: BLE001 - leave the pipeline as it was
            self._clean_failure()
            if "shape" in str(exc) or "size mismatch" in str(exc):
                message = (f"the IP-Adapter {weights.name} does not fit this model: its layer sizes "
                           f"differ, so it was made for another kind of model (this one is "
                           f"{_FAMILY[self.family]})")
            else:
                message = (f"could not load the IP-Adapter {weights.name} ({short(exc)}); is it "
                           f"made for {_FAMILY[self.family]} models?")
            raise AdapterError(message, "ip_adapter") from exc
        self._state = state
        self._key = key
        self._scale = None

    def _clean_failure(self) -> None:
        try:
            self._library_unload()
        except Exception:  # noqa: BLE001 - best effort; the processors are reset below anyway
            plain_processors(self.base.unet, everything=True)
        self.base.register_modules(image_encoder=None)
        self._key = None
        self._scale = None


def plain_processors(unet, which=None, everything: bool = False) -> bool:
    """Replace attention processors by the default one; returns whether any was replaced.

    By default those the IP-Adapter loader and unloader cannot rebuild (they recreate each
    processor from its class without arguments, which fails for sliced attention)."""
    def needs_args(p) -> bool:
        if "IPAdapter" in type(p).__name__:
            return False
        try:
            type(p)()
        except TypeError:
            return True
        return False

    which = which or (lambda p: True if everything else needs_args(p))
    procs = unet.attn_processors
    if not any(which(p) for p in procs.values()):
        return False
    unet.set_attn_processor(
        {n: (AttnProcessor2_0() if which(p) else p) for n, p in procs.items()})
    return True


def _read_ip_state(path: Path) -> dict:
    state: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                group, _, rest = key.partition(".")
                if group in state:
                    state[group][rest] = f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path.name} is damaged or not a safetensors file ({short(exc)})",
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
    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)
