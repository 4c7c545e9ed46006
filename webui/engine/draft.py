"""Draft mode: the UNet's deep features reused across steps (DeepCache-style), lossy and faster.

Between neighbouring sampling steps the UNet's deep, low-resolution features change little; its
outermost blocks (full resolution) carry the detail that changes. So on a "full" step every
block runs and the outputs of the deep ones are kept: the down blocks after the first, the mid
block and the up blocks before the last. On the `reuse` steps after it those blocks are not run:
they hand back what they gave on the full step, and only the time embedding, the first down
block and the last up block (with its skip connections from the first) are computed. That skips
most of the UNet's work on those steps; the picture is an approximation of the full job's (a
draft), which is why it is off by default and its notice says it is lossy.

Written here rather than taken from a library: the published feature-reuse packages patch the
UNet's forward for particular diffusers versions; replacing the forward of the deep blocks
(instance attributes, restored afterwards) works with any UNet2DConditionModel the library
builds, PAG, CFG, ControlNet and IP-Adapter included, and leaves the compiled path alone (draft
jobs run eager).
"""

from __future__ import annotations


def notice(reuse: "FeatureReuse") -> str:
    """What the job's notice says of a batch's draft ('' when no step reused)."""
    reused = reuse.calls - reuse.full_calls
    if reused <= 0:
        return ""
    return (f"Draft mode (lossy): {reused} of {reuse.calls} steps reused the UNet's deep "
            "features")


class FeatureReuse:
    """Context manager: while it is entered, `unet` reuses its deep blocks' outputs on `reuse`
    calls after each full one (0: every call is full, nothing changes). One per batch: the
    first call of a batch is always full."""

    def __init__(self, unet, reuse: int):
        self.unet = unet
        self.reuse = reuse
        deep = [*list(unet.down_blocks)[1:], unet.mid_block, *list(unet.up_blocks)[:-1]]
        self.deep = [module for module in deep if module is not None]
        self.calls = 0  # UNet calls so far
        self.full_calls = 0  # of them, the ones that ran every block
        self._reusing = False
        self._kept: dict[int, tuple] = {}  # id(module) -> (input shape, output)
        self._hook = None

    def __enter__(self):
        if self.reuse <= 0:
            return self
        self._hook = self.unet.register_forward_pre_hook(self._before_call)
        for module in self.deep:
            module.forward = self._wrap(module)
        return self

    def __exit__(self, *exc):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            for module in self.deep:
                # The instance attribute goes: the class's forward is back.
                module.__dict__.pop("forward", None)
        self._kept.clear()
        return False

    def _before_call(self, *_):
        self._reusing = (self.calls % (self.reuse + 1) != 0
                         and len(self._kept) == len(self.deep))
        if not self._reusing:
            self.full_calls += 1
        self.calls += 1

    def _wrap(self, module):
        run = type(module).forward.__get__(module)
        key = id(module)

        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            shape = getattr(hidden, "shape", None)
            kept = self._kept.get(key)
            if self._reusing and kept is not None and kept[0] == shape:
                return kept[1]
            out = run(*args, **kwargs)
            self._kept[key] = (shape, out)
            return out
        return forward
