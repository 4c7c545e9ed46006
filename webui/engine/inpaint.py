"""Inpainting: masks (white = repaint), the fills the masked area starts from, pasting the
original back outside the mask, and inpainting pipelines and models.

The settings of an inpainting job (mode 'inpaint'):
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

The mask reader itself (`mask_to_l`) lives in adapter_inputs.py, which the front doors import
without torch.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..params import MASKED_CONTENT
from .adapter_inputs import AdapterError, mask_to_l


def is_inpainting_model(unet) -> bool:
    """Whether a UNet is an inpainting one (9 input channels: latents, mask, picture)."""
    return unet.config.in_channels == 9


# -- masks -----------------------------------------------------------------------------------


def blur_mask(mask, radius: float):
    return mask if radius <= 0 else mask.filter(ImageFilter.GaussianBlur(radius))


def fill_masked(image, mask, passes: int = 12):
    """The picture with the masked area filled from its surroundings (the 'fill' start).

    The hole starts as the average colour of the kept pixels; repeated blurs, each pasted back
    inside the hole only, pull the border colours inwards, so the model starts from a smooth
    guess that matches the edges instead of from the old content.
    """
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


# -- inpainting jobs -------------------------------------------------------------------------


def inpaint_kwargs(pipe, device: str, image, size, mask, blur, full_res, padding, content,
                   seed, output_type) -> dict:
    """The call kwargs of an inpainting job on `pipe` (the base pipeline, whose VAE encodes
    the latent starts on `device`): the mask, its crop, and the image the masked area starts
    from (see the module docstring)."""
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
        if pipe.unet.config.in_channels != 4:
            raise AdapterError(
                f"masked content {content!r} works with standard models only; an inpainting "
                "model already sees the hole: use 'original' or 'fill'", "masked_content")
        if full_res:
            raise AdapterError(f"masked content {content!r} cannot be combined with 'inpaint "
                               "only masked'; use 'original' or 'fill' there", "masked_content")
        latents = masked_latents(pipe, device, image, mask_l, content, seed)
        kwargs["masked_image_latents"] = latents
        kwargs["height"], kwargs["width"] = size[1], size[0]
        image = latents
    kwargs["image"] = image
    return kwargs


def masked_latents(pipe, device: str, image, mask, content: str, seed: int):
    """The init latents with the masked area replaced by noise or zeros."""
    vae = pipe.vae
    images = image if isinstance(image, (list, tuple)) else [image]
    pixels = pipe.image_processor.preprocess(images).to(device=device, dtype=vae.dtype)
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


def pass_output_type_to_check(pipe) -> None:
    """Let 'inpaint only masked' through the input check of pipelines that forget to give it the
    output type (the SD 1.x PAG inpaint pipeline passes None, which the crop check refuses).

    prepare() only asks for the crop with PIL output, so a missing output type means PIL.
    """
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
