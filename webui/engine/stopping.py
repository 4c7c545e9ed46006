"""Stopping a job inside a sampling step, not only between steps.

The library checks its interrupt flag between steps. At 1536 px on a CPU one step lasts several
seconds, so an Interrupt, a Skip or the job's time budget would wait for the rest of it. While
a job samples (eager UNet only), the UNet's resnet and transformer blocks check the job's stop
request before each runs: a stop abandons the step. The UNet then answers zeros, which the
scheduler turns into latents nobody keeps; the step's end callback puts back the latents of
the last finished step and sets the library's flag, so the pipeline decodes what was sampled
exactly as it does after a stop between steps (same picture, sooner).

A stop during the first step has no finished step to go back to: the batch ends with nothing
sampled (`NothingSampled` from `step_end`), so an Interrupt then keeps only the batches already
done and a Skip moves on to the next batch. The compiled UNet is left alone (its graphs would
be rebuilt for hooks; its steps are short anyway).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class StepAbandoned(Exception):
    """Raised by a block's hook to leave a UNet call whose job was asked to stop."""


class NothingSampled(Exception):
    """The first step of a batch was abandoned: there is nothing to decode."""


def _blocks(unet) -> list[torch.nn.Module]:
    """The UNet's modules worth a check: each resnet and transformer block (a few dozen per
    call; each check reads one flag)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]


class InStepStop:
    """Installed on `unet` for one sampling call (`with InStepStop(unet, should_stop) as stop`);
    `stop.step_end(latents)` is called at each step's end and returns the latents the pipeline
    must go on with. `abandoned` tells whether the step that just ended was abandoned."""

    def __init__(self, unet, should_stop: Callable[[], bool]):
        self.unet = unet
        self.should_stop = should_stop
        self.last_latents = None  # the latents of the last finished step
        self.abandoned = False
        self._handles: list = []
        self._saved_forward: Any = None

    def __enter__(self) -> "InStepStop":
        unet = self.unet

        def check(module, args):
            if self.should_stop():
                raise StepAbandoned

        self._handles = [block.register_forward_pre_hook(check) for block in _blocks(unet)]
        self._saved_forward = unet.__dict__.get("forward")
        inner = unet.forward  # the class's, or a memory mode's wrapper of it

        def forward(sample, *args, **kwargs):
            try:
                return inner(sample, *args, **kwargs)
            except StepAbandoned:
                self.abandoned = True
                shape = (sample.shape[0], unet.config.out_channels, *sample.shape[2:])
                zeros = torch.zeros(shape, dtype=sample.dtype, device=sample.device)
                if kwargs.get("return_dict", True):
                    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

                    return UNet2DConditionOutput(sample=zeros)
                return (zeros,)

        unet.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._saved_forward is not None:
            self.unet.forward = self._saved_forward
        else:
            self.unet.__dict__.pop("forward", None)

    def step_end(self, latents):
        """The latents to go on with after a step: the step's own, or, when it was abandoned,
        those of the last finished step (NothingSampled when there is none)."""
        if self.abandoned:
            if self.last_latents is None:
                raise NothingSampled
            return self.last_latents
        self.last_latents = latents
        return latents
