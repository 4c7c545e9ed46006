"""The benchmark's reference: plain diffusers img2img as a user would write it.

`StableDiffusionImg2ImgPipeline` / `StableDiffusionXLImg2ImgPipeline` from the same weights the
engine loads, fp16 on CUDA, default attention, no compile, the scheduler swapped with
`from_config`, one call per image. Nothing of the engine is used here, so whatever the engine
adds or saves shows in the ratio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# The two samplers the benchmark runs, written out as a user swaps them in diffusers.
SCHEDULER_CLASSES = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}


@dataclass
class PlainRun:
    seconds: float
    unet_calls: int
    image: object  # the first PIL image


class PlainPipeline:
    """A plain pipeline for one model, counting its UNet calls (a forward hook, which costs
    nothing measurable: one Python call per step)."""

    def __init__(self, model: str, device: str, dtype):
        import diffusers
        import torch

        from ..tiny import FULL_SIZE_MODELS, TINY_MODELS, build_pipeline

        if model in FULL_SIZE_MODELS or model in TINY_MODELS:
            # The built-in random models come from a fixed seed: these are the very weights
            # the engine builds for the same name.
            pipe = build_pipeline(model)
        else:
            # A diffusers folder, loaded the way its model card says.
            pipe = diffusers.AutoPipelineForImage2Image.from_pretrained(model, torch_dtype=dtype)
        # The built-in models are made in float32; a cast only when another dtype is asked
        # (the library warns about every cast, needed or not).
        self.pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device
        self.calls = 0
        self._torch = torch
        self._diffusers = diffusers
        self.base_config = dict(self.pipe.scheduler.config)

        def count(*_):
            self.calls += 1

        self.pipe.unet.register_forward_hook(count)

    def run(self, init, prompt: str, negative_prompt: str, strength: float, steps: int,
            cfg: float, scheduler: str, seed: int) -> PlainRun:
        cls_name, extra = SCHEDULER_CLASSES[scheduler]
        cls = getattr(self._diffusers, cls_name)
        self.pipe.scheduler = cls.from_config(self.base_config, **extra)
        generator = [self._torch.Generator(self.device).manual_seed(seed)]
        self.calls = 0
        started = time.perf_counter()
        images = self.pipe(prompt=prompt, negative_prompt=negative_prompt, image=init,
                           strength=strength, num_inference_steps=steps, guidance_scale=cfg,
                           generator=generator).images
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()
        return PlainRun(time.perf_counter() - started, self.calls, images[0])

    def close(self) -> None:
        """Drop the weights, so the engine's side is measured without them resident."""
        import gc

        del self.pipe
        gc.collect()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
