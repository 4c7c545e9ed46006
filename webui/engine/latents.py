"""Latent files: a job's latents saved as .safetensors (with its settings as JSON in the
metadata), read back and checked against the model and size they are to continue on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .adapter_inputs import AdapterError

LATENT_FORMAT = "webui-latents/1"


def latents_bytes(tensor, params: dict | None = None) -> bytes:
    """Latents (N, C, h, w) as .safetensors bytes with `params` as JSON in the metadata."""
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
    except (json.JSONDecodeError, RecursionError):
        raise AdapterError(f"{path.name}: its stored settings are not valid JSON", "latents") \
            from None
    check_latents(tensor, channels=channels, size=size, scale_factor=scale_factor)
    return tensor, params


def check_latents(tensor, channels: int | None = 4, size: tuple[int, int] | None = None,
                  scale_factor: int = 8) -> None:
    """Raise AdapterError unless `tensor` is a latent batch of `channels` matching `size` (w, h)."""
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
