"""Step previews: latents to a rough RGB picture with one 4x3 matrix, no VAE pass.

A decode through the VAE costs as much as several sampling steps at 1024 px; this costs nothing
and is what the studio shows while a job runs. The factors are a least-squares fit of RGB on the
latent channels of each VAE family, so colours and layout are right and detail is not.
"""

from __future__ import annotations

import torch
from PIL import Image

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
