"""Draft mode (webui/engine/draft.py): the UNet's deep blocks run on one step in draft + 1 and
their features are reused on the others; the picture stays close to the full job's, the job says
it is lossy, and the setting travels in the infotext like every other."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui import infotext
from webui.engine import JobRequest
from webui.params import ParamsError, make


def picture(width: int = 128, height: int = 96) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 40, 30))
    image.paste((20, 90, 200), (width // 8, height // 6, width * 5 // 8, height * 2 // 3))
    return image


class Calls:
    """Counts the calls of one module (a forward hook) while entered."""

    def __init__(self, module):
        self.module, self.count = module, 0

    def __enter__(self):
        self.hook = self.module.register_forward_hook(self._seen)
        return self

    def _seen(self, *_):
        self.count += 1

    def __exit__(self, *_):
        self.hook.remove()


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image.convert("RGB"), np.float32)


def test_a_draft_job_skips_the_deep_blocks_and_stays_close_to_the_full_one(engine):
    settings = dict(width=128, height=96, steps=12, strength=0.8, seed=5, pag_scale=0.0)
    full = engine.generate(JobRequest(make(**settings), picture(), save=False))
    unet = engine.pipeline("tiny-random").unet
    # Counted inside the blocks (a block's own call is made either way; its work is not).
    with Calls(unet.mid_block.resnets[0]) as deep, Calls(unet.down_blocks[0].resnets[0]) as outer:
        drafted = engine.generate(JobRequest(make(**settings, draft=2), picture(), save=False))
    # 9 effective steps: the deep blocks ran on steps 1, 4 and 7, the outer ones on all nine.
    assert (deep.count, outer.count) == (3, 9) == (3, drafted.effective_steps)
    assert "Draft mode (lossy): 6 of 9 steps reused the UNet's deep features" in drafted.notice
    assert drafted.images[0].image.size == (128, 96)
    other_seed = engine.generate(JobRequest(make(**{**settings, "seed": 6}), picture(),
                                            save=False))
    drift = np.abs(pixels(drafted) - pixels(full)).mean()
    assert 0 < drift < np.abs(pixels(other_seed) - pixels(full)).mean() / 4
    # The setting is in the infotext and reads back from it.
    text = drafted.images[0].infotext
    assert "Draft: 2" in text and infotext.parse(text).params.draft == 2
    assert "Draft" not in full.images[0].infotext
    # The blocks are themselves again afterwards: the same full job makes the same picture.
    again = engine.generate(JobRequest(make(**settings), picture(), save=False))
    assert np.array_equal(pixels(again), pixels(full))


def test_each_batch_starts_with_a_full_step_and_pag_drafts_too(engine):
    unet = engine.pipeline("tiny-random").unet
    with Calls(unet.mid_block.resnets[0]) as deep:
        result = engine.generate(JobRequest(
            make(steps=4, strength=1.0, seed=2, batch_count=2, draft=1, pag_scale=3.0),
            picture(64, 64), save=False))
    assert len(result.images) == 2
    assert deep.count == 2 * 2  # steps 1 and 3 of each batch
    assert "2 of 4 steps reused" in result.notice


def test_draft_on_an_sdxl_model(engine):
    result = engine.generate(JobRequest(
        make(model="tiny-random-xl", steps=4, strength=1.0, seed=1, draft=3, pag_scale=0.0,
             width=96, height=64), picture(96, 64), save=False))
    assert result.images[0].image.size == (96, 64)
    assert "3 of 4 steps reused" in result.notice


@pytest.mark.parametrize("value", [-1, 5, 2.5, "two"])
def test_a_draft_out_of_range_is_refused_by_name(value):
    with pytest.raises(ParamsError) as caught:
        make(draft=value)
    assert caught.value.field == "draft" and "draft" in str(caught.value)
