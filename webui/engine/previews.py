"""Step previews: latents to a rough RGB picture with one 4x3 matrix, no VAE pass.

A decode through the VAE costs as much as several sampling steps at 1024 px; this costs nothing
and is what the studio shows while a job runs. The factors are a least-squares fit of RGB on the
latent channels of each VAE family, so colours and layout are right and detail is not. Where a
tiny VAE is present and asked for (`--preview-decoder tiny`), TinyDecoder below shows the detail.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .models import TINY_VAE_NAMES, TINY_VAE_SUBDIR

# Credit: these are not fitted by this project. They are the approximate latent-to-RGB factors
# published by the community for SD 1.x latents (SD 2.x shares that VAE) and for SDXL latents (the
# earlier set, without a bias term), the ones several Stable Diffusion front ends use for their
# live previews.
# Rows: latent channels; columns: R, G, B.
_SD_FACTORS = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
_SDXL_FACTORS = [
    [0.3920, 0.4054, 0.4549],
    [-0.2634, -0.0196, 0.0653],
    [0.0568, 0.1687, -0.0755],
    [-0.3112, -0.2359, -0.2076],
]


def latents_to_rgb(latents, family: str = "sd1", max_side: int = 256):
    """PIL images (one per batch item) approximating `latents` of shape (B, 4, h, w)."""
    factors = torch.tensor(_SDXL_FACTORS if family == "sdxl" else _SD_FACTORS)
    with torch.no_grad():
        lat = latents.detach()[:, :4].float().cpu()
        rgb = torch.einsum("bchw,cr->bhwr", lat, factors)
        rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    images = []
    for item in rgb:
        image = Image.fromarray(item, "RGB")
        # Latents are 1/8 of the picture: scale up so the preview reads at a glance.
        scale = max(1, min(8, max_side // max(image.size)))
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        images.append(image)
    return images


# -- the optional tiny-VAE previews --------------------------------------------------------------
# `--preview-decoder tiny`: previews decoded by a tiny VAE (the library's AutoencoderTiny, a
# distilled decoder of about a million parameters) instead of the matrix above. They show the
# picture's detail, not just its colours, at a cost: on the CPU over a second a preview at
# 512 px (on a GPU expected to be milliseconds; the benchmark measures it), so it is off by
# default. Like every preview they are an approximation (lossy) of what the full VAE will
# decode; results always use the full VAE.
# The longest side of a tiny-VAE preview: it decodes to the full picture size, more than a
# preview pane shows and more than is worth sending a few times a second.
TINY_MAX_SIDE = 512


def tiny_vae_folder(models_dir, family: str):
    """The diffusers folder of the tiny VAE for `family` under models/VAE-approx, or None."""
    folder = Path(models_dir) / TINY_VAE_SUBDIR / TINY_VAE_NAMES[family]
    return folder if (folder / "config.json").is_file() else None


class TinyDecoder:
    """Previews from a tiny VAE (an AutoencoderTiny diffusers folder) on `device` in `dtype`.

    It decodes the diffusion-space latents as they are (a tiny VAE has scaling factor 1: it
    was trained on them), so it needs no knowledge of the full VAE's scaling."""

    def __init__(self, folder, device: str, dtype):
        from diffusers import AutoencoderTiny

        # Only its safetensors weights are read (a pickle beside them is never opened).
        self.vae = AutoencoderTiny.from_pretrained(folder, torch_dtype=dtype,
                                                   use_safetensors=True).to(device).eval()
        self.device, self.dtype = device, dtype

    def __call__(self, latents, max_side: int = TINY_MAX_SIDE) -> list:
        with torch.no_grad():
            lat = latents.detach()[:, :4].to(self.device, self.dtype)
            rgb = self.vae.decode(lat).sample.float()
            rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8)
            rgb = rgb.permute(0, 2, 3, 1).cpu().numpy()
        images = []
        for item in rgb:
            image = Image.fromarray(item, "RGB")
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.BILINEAR)
            images.append(image)
        return images
