"""Preparing a job's pipeline: the adapters a job asks for, on one resident pipeline.

`Adapters(base_pipe, lora_dir)` is bound to the engine's resident img2img pipeline. Each job calls
`prepare(JobAdapters(...))`, which brings the pipeline's adapter state to what the job asks for,
doing as little as possible (a LoRA already loaded is never read again, a weight change is one
`set_adapters`), and returns the pipeline to call plus the keyword arguments for that call:

    pipe, kwargs = adapters.prepare(JobAdapters(image=init, loras=[("film", 0.8)], pag_scale=3.0))
    images = pipe(prompt=..., strength=..., generator=..., **kwargs).images

Every pipeline `prepare` returns shares the base pipeline's modules (UNet, VAE, text encoders,
scheduler): text-to-image, inpainting, PAG and ControlNet are the same weights driven by another
pipeline class,
never a second copy, built once and kept here. LoRAs and the IP-Adapter live inside those shared
modules, so they apply whichever pipeline runs. When no adapter is asked for, the base pipeline
is returned in its base state and gives exactly the output it gave before any adapter was used.

Each adapter has its own module: lora.py, ip_adapter.py, controlnet.py, inpaint.py (masks and
masked content, explained there) and latents.py (latent files). Failures raise AdapterError
(adapter_inputs.py) with a sentence meant for the artist. A LoRA that fails to load leaves the
previous job's LoRAs exactly as they were; an IP-Adapter that fails leaves none loaded; in every
case the next job runs normally.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from diffusers import (AutoPipelineForImage2Image, AutoPipelineForInpainting,
                       AutoPipelineForText2Image)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from ..params import MODES
from .adapter_inputs import AdapterError, short
from .controlnet import ControlNets, ControlNetSpec
from .detectors import Detectors
from .inpaint import inpaint_kwargs, is_inpainting_model, pass_output_type_to_check
from .ip_adapter import IPAdapter, IPAdapterSpec, plain_processors
from .latents import check_latents
from .lora import Loras
from .models import FAMILY_LABELS as _FAMILY, pipeline_family

# The studio's modes (params.MODES) plus text-to-image, which only front doors without an init
# image ask for; the studio's mode picker lists MODES alone.
PIPELINE_MODES = (*MODES, "txt2img")
_AUTO = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting,
         "txt2img": AutoPipelineForText2Image}


@dataclass
class JobAdapters:
    """What one job asks of the adapters, and the pictures they need: `Adapters.prepare`'s input.

    Every field has the value of a plain img2img job with no adapter as its default.
    """

    # 'img2img', 'inpaint' (needs `mask`) or 'txt2img' (from the prompt alone: needs `size`;
    # no image or mask; ControlNets bring their own control images).
    mode: str = "img2img"
    # The init image: PIL, a list of PIL images (one batch), or a latent tensor
    # (N, 4, h/8, w/8). When given it is checked, possibly changed (masked content) and
    # returned in kwargs['image']: then do not pass `image=` to the pipeline yourself.
    image: Any = None
    # The requested (width, height); checks latent input, and sizes control images when
    # `image` is not given.
    size: tuple[int, int] | None = None
    # [(name, weight)], [LoraSpec] or {name: weight}; empty unloads them all.
    loras: Iterable = ()
    # The IP-Adapter and its reference image; None unloads it.
    ip_adapter: IPAdapterSpec | None = None
    # Perturbed-attention guidance; 0 = off (the plain pipeline runs).
    pag_scale: float = 0.0
    # ControlNetSpec list; several run together (their effects add up).
    controlnets: Iterable[ControlNetSpec] = ()
    # Inpainting (see inpaint.py): the mask (white = repaint), its blur radius in px,
    # "inpaint only masked" and its padding in px, and what the masked area starts from.
    mask: Any = None
    mask_blur: float = 4
    inpaint_full_res: bool = False
    padding: int = 32
    masked_content: str = "original"
    # Seeds the noise of masked content 'latent noise'.
    seed: int = 0
    # 'pil', 'np', 'pt' or 'latent'; returned in kwargs (inpaint only masked needs PIL).
    output_type: str = "pil"
    # The job's denoising strength (0-1), passed to the pipeline call too; at 1 an img2img job
    # ignores the picture. None: the image is used as given.
    strength: float | None = None


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
    lora_hot_rank: the rank reserved in the LoRA hot slot for the compiled UNet (lora.py); 0,
        the default: no slot.
    """

    def __init__(self, base_pipe, lora_dir="models/Lora", max_controlnets: int = 3,
                 detectors: Detectors | None = None, device: str | None = None,
                 family: str | None = None, lora_hot_rank: int = 0):
        self.base = base_pipe
        # The engine knows the family from the model source; alone, it is read off the pipe.
        self.family = family or pipeline_family(base_pipe)
        self.device = device or str(base_pipe.unet.device)
        self.detectors = detectors or Detectors(self.device)
        self.loras = Loras(base_pipe, lora_dir, self.family, hot_rank=lora_hot_rank)
        self.ip_adapter = IPAdapter(base_pipe, self.device, self.family)
        self.controlnets = ControlNets(base_pipe, self.device, self.family, self.detectors,
                                       max_controlnets, on_drop=self._forget_controlnet)
        self._pipes: dict[tuple, Any] = {}  # (mode, pag, ControlNet keys) -> derived pipeline
        self.notices: list[str] = []  # things the artist should know about the last prepare

    # -- information ---------------------------------------------------------------------
    @property
    def inpainting_model(self) -> bool:
        """Whether the UNet is an inpainting one (9 input channels: latents, mask, picture)."""
        return is_inpainting_model(self.base.unet)

    def loaded_loras(self) -> dict[str, float]:
        """LoRA name -> weight of the LoRAs applied to the pipeline now."""
        return self.loras.loaded()

    def parse_prompt(self, prompt: str) -> tuple[str, list[tuple[str, float]]]:
        """parse_prompt_loras, then check every name exists (AdapterError lists the LoRAs)."""
        return self.loras.parse_prompt(prompt)

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
        if self.inpainting_model and mode != "txt2img":
            mode = "inpaint"  # img2img runs as inpainting of the whole picture (see prepare)
        if self.family == "sdxl" and mode == "inpaint" and controlnets:
            return ("for SDXL models PAG cannot be combined with ControlNet when inpainting "
                    "(the library has no such pipeline)")
        if self.family != "sdxl" and mode == "img2img" and controlnets and latent_input:
            return (f"on {_FAMILY[self.family]} models PAG with ControlNet starts from a picture, "
                    "not from latents")
        return ""

    def _build(self, mode: str, pag: bool, controlnets: tuple):
        auto = _AUTO[mode]
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
                f"{_FAMILY[self.family]} models in this diffusers version ({short(exc)}); turn "
                f"{' or '.join(parts) or 'it'} off", "pag" if pag else "controlnet") from None
        for name in ("unet", "vae", "text_encoder"):
            # from_pipe must share the resident modules; a copy would double the memory.
            assert getattr(pipe, name) is getattr(self.base, name), name
        config = getattr(self.base, "_progress_bar_config", None)
        if config is not None:
            pipe.set_progress_bar_config(**config)
        if mode == "inpaint":
            pass_output_type_to_check(pipe)
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
        plain_processors(self.base.unet, lambda p: type(p).__name__.startswith("PAG"))

    def _forget_controlnet(self, key: str) -> None:
        """Drop the pipelines built with a ControlNet model the cache let go."""
        self._pipes = {k: v for k, v in self._pipes.items() if key not in k[2]}

    # -- one job -------------------------------------------------------------------------
    def prepare(self, job: JobAdapters) -> tuple[Any, dict]:
        """Set the adapters for one job; returns (pipeline, kwargs) for the pipeline call.

        kwargs hold the output type, and the init image when `job.image` is given (see
        JobAdapters).
        """
        mode, image = job.mode, job.image
        if mode not in PIPELINE_MODES:
            raise AdapterError(f"unknown mode {mode!r}; use one of: {', '.join(PIPELINE_MODES)}",
                               "mode")
        if job.output_type not in ("pil", "np", "pt", "latent"):
            raise AdapterError("output type must be pil, np, pt or latent (got "
                               f"{job.output_type!r})", "output_type")
        if mode == "txt2img":
            self._check_text_job(job)
        self._repair()
        self.notices = []
        kwargs: dict[str, Any] = {"output_type": job.output_type}
        # Inputs are checked and the pipeline is built before any LoRA or IP-Adapter changes, so
        # a job that fails on a bad mask or an unsupported combination changes nothing.
        image_size, latent_input = self._check_image(image, job.size)
        if job.pag_scale < 0:
            raise AdapterError(f"PAG scale must be 0 (off) or more (got {job.pag_scale:g})", "pag")
        strength = job.strength
        if strength is not None and not 0.0 <= strength <= 1.0:
            raise AdapterError(f"strength must be from 0 to 1 (got {strength:g})", "strength")
        pag = job.pag_scale > 0
        specs = list(job.controlnets or ())
        if pag:
            limit = self.pag_limit(mode, controlnets=bool(specs), latent_input=latent_input)
            if limit:
                raise AdapterError(f"PAG cannot run here: {limit}; set the PAG scale to 0", "pag")
            kwargs["pag_scale"] = float(job.pag_scale)
        if specs:
            kwargs.update(self.controlnets.call_kwargs(specs, image_size))
            if mode == "txt2img":
                # The text-to-image ControlNet pipelines take the control picture as `image`
                # (they have no init image to confuse it with).
                kwargs["image"] = kwargs.pop("control_image")
        if mode == "img2img" and job.mask is not None:
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
            kwargs.update(inpaint_kwargs(self.base, self.device, image, image_size, job.mask,
                                         job.mask_blur, job.inpaint_full_res, job.padding,
                                         job.masked_content, job.seed, job.output_type))
        elif pipe_mode == "inpaint":
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
        loaded = tuple(self.controlnets.model(s.model) for s in specs)
        pipe = self.pipeline(pipe_mode, pag, loaded)
        if image_size is not None and _takes(pipe, "height"):
            # Pipelines that take a size fall back to the UNet's default (512x512 for SD 1.5)
            # when it is not given: every job states its own ("only masked" repaints the crop
            # at this size too).
            kwargs.setdefault("width", image_size[0])
            kwargs.setdefault("height", image_size[1])

        self.loras.apply(job.loras)
        kwargs.update(self.ip_adapter.apply(job.ip_adapter, self.notices))
        # Loading an IP-Adapter registers an image encoder on the base pipeline.
        if pipe is not self.base:
            self._sync(pipe)
        return pipe, kwargs

    def unload_all(self) -> None:
        """Back to the bare base pipeline (LoRAs and IP-Adapter removed, caches kept)."""
        self._repair()
        self.loras.apply(())
        self.ip_adapter.unload()

    # -- helpers for prepare -------------------------------------------------------------
    def _check_text_job(self, job: JobAdapters) -> None:
        """A text-to-image job has nothing to start from but the prompt: refuse what needs a
        picture, before anything changes."""
        if job.image is not None:
            raise AdapterError("text-to-image makes the picture from the prompt alone: give no "
                               "init image (or use img2img)", "image")
        if job.mask is not None:
            raise AdapterError("text-to-image has no picture to inpaint: give no mask (or "
                               "inpaint with an init image)", "mask")
        if not job.size:
            raise AdapterError("text-to-image needs the picture's size", "size")
        if self.inpainting_model:
            raise AdapterError("this is an inpainting model: its UNet also reads a mask and a "
                               "picture to repaint, so it cannot make a picture from text "
                               "alone; use a regular model, or img2img with an init image",
                               "model")

    def _check_image(self, image, size):
        """(pixel size of the job or None, whether the input is latents)."""
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
        pipe = self.base
        f = pipe.vae_scale_factor
        return torch.zeros(count, pipe.vae.config.latent_channels, size[1] // f, size[0] // f,
                           device=self.device, dtype=pipe.vae.dtype)


def _takes(pipe, name: str) -> bool:
    """Whether the pipeline's call has the keyword argument `name`."""
    return name in inspect.signature(type(pipe).__call__).parameters
