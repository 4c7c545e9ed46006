"""Colour correction (the setting, its infotext and preset life, the engine's use of it) and
loopback (passes chained through the engine, strength factor, seeds, interrupt, validation)."""

from __future__ import annotations

import re

import numpy as np
import gradio as gr
import pytest
from PIL import Image, ImageDraw

from webui import infotext, presets
from webui import params as P
from webui.engine.colour import match_colours
from webui.engine import JobRequest
from webui.ui import loopback
from webui.ui.handlers import Session, Studio

# gr.Warning outside a request falls back to a Python warning; the handlers use it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")

W, H = 96, 64  # not square: width and height must never be swapped


def scene(width: int = W, height: int = H) -> Image.Image:
    """A picture with distinct colour areas and a gradient, so histograms have shape."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                          np.broadcast_to(y, (height, width, 1)),
                          np.broadcast_to((x + y) / 2, (height, width, 1))], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    ImageDraw.Draw(image).rectangle((10, 10, 40, 40), fill=(200, 40, 30))
    return image


def means(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def tinted(image: Image.Image) -> Image.Image:
    """`image` with a strong green-blue cast, as colour drift gives after many passes."""
    a = np.asarray(image, dtype=np.int16) + np.array([-60, 50, 40])
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


# -- colour correction -----------------------------------------------------------------------------
def test_match_colours_pulls_a_tinted_picture_back_to_the_reference():
    init = scene()
    drifted = tinted(init)
    fixed = match_colours(drifted, init)
    assert fixed.mode == "RGB" and fixed.size == (W, H)
    before = np.abs(means(drifted) - means(init))
    after = np.abs(means(fixed) - means(init))
    assert before.max() > 30
    assert after.max() < 6 and (after < before).all()


def test_match_colours_resizes_a_reference_of_another_size():
    small = scene().resize((48, 32))
    fixed = match_colours(tinted(scene()), small)
    assert fixed.size == (W, H)
    assert np.abs(means(fixed) - means(small)).max() < 8


def test_engine_colour_correction_moves_results_toward_the_init(engine):
    init = tinted(scene())  # far from the tiny model's grey noise
    common = dict(steps=4, strength=0.8, seed=11)
    plain = engine.generate(P.make(**common), init, save=False)
    fixed = engine.generate(P.make(color_correction=True, **common), init, save=False)
    seen = fixed.init  # the init as the engine saw it (same size as the result)
    assert fixed.images[0].image.size == seen.size == (W, H)
    off = np.abs(means(plain.images[0].image) - means(seen)).sum()
    on = np.abs(means(fixed.images[0].image) - means(seen)).sum()
    assert on < off / 2
    assert "Color correction: True" in fixed.images[0].infotext
    assert "Color correction" not in plain.images[0].infotext


def test_colour_correction_keeps_pixels_outside_the_inpaint_mask_exact(engine):
    init = scene()
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 47, 55), fill=255)
    result = engine.generate(JobRequest(P.make(steps=4, strength=0.9, seed=3,
                                               color_correction=True), init, mask=mask,
                                        save=False))
    out = np.asarray(result.images[0].image)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(init)[outside])


def test_colour_correction_is_not_applied_to_latent_output(engine):
    result = engine.generate(P.make(steps=4, strength=0.5, seed=1, color_correction=True,
                                    output_type="latent"), scene(), save=False)
    assert result.images[0].latents is not None
    assert "not on latent output" in result.notice


# -- the setting: params, infotext, presets ------------------------------------------------------
def test_color_correction_defaults_off_and_refuses_non_booleans():
    assert P.default("color_correction") is False
    assert P.GenerationParams.model_fields["color_correction"].description
    with pytest.raises(P.ParamsError, match=r"^color_correction must be true or false"):
        P.make(color_correction="maybe")


@pytest.mark.parametrize("value", [True, False])
def test_color_correction_infotext_round_trip(value):
    params = P.make(prompt="a lake", color_correction=value)
    text = infotext.format(params, seed=1, width=W, height=H)
    assert ("Color correction: True" in text) is value
    parsed = infotext.parse(text)
    assert parsed.params.color_correction is value and not parsed.warnings
    assert ("color_correction" in parsed.fields) is value
    # Text without the key (other tools' or older files) reads back as off.
    assert infotext.parse("a lake\nSteps: 4, Sampler: Euler a, Seed: 1").params \
        .color_correction is False


def test_color_correction_in_presets():
    preset = presets.from_params("Calm", P.make(color_correction=True))
    assert preset.to_dict()["color_correction"] is True
    again = presets.parse(preset.to_json())
    assert presets.apply(again, P.make()).color_correction is True
    with pytest.raises(presets.PresetError, match="color_correction must be true or false"):
        presets.validate_settings({"color_correction": "yes"})


# -- loopback -----------------------------------------------------------------------------------
class Recorder:
    """Wraps engine.submit to keep what each job was given."""

    def __init__(self, engine, monkeypatch):
        self.calls: list[tuple[P.GenerationParams, Image.Image, JobRequest]] = []
        real = engine.submit

        def submit(request):
            self.calls.append((request.params, request.init_image, request))
            return real(request)

        monkeypatch.setattr(engine, "submit", submit)


def run_loopback(studio, session, init, **settings):
    settings.setdefault("steps", 4)
    settings.setdefault("strength", 0.5)
    return studio.loopback(session, init, **settings)


def test_loopback_chains_passes_saves_each_and_applies_the_factor(engine, monkeypatch):
    studio, session = Studio(engine), Session()
    record = Recorder(engine, monkeypatch)
    views = list(run_loopback(studio, session, scene(), seed=40, batch_count=2,
                              loopback_passes=3, loopback_strength_factor=0.8))
    final = views[-1]
    assert final.status.startswith("**Done**: 3 loopback passes")
    assert loopback.BATCH_NOTE in final.status
    assert any(v.status.startswith("Pass 3/3 · Step") for v in views)
    assert len(record.calls) == 3 and len(session.results) == 3
    for k, ((params, init, inputs), item) in enumerate(zip(record.calls, session.results)):
        assert params.batch_count == params.batch_size == 1
        assert params.strength == pytest.approx(0.5 * 0.8 ** k)
        assert params.seed == item.seed == 40 + k
        assert params.color_correction is True  # on by default for loopback
        assert init.size == item.image.size == (W, H)
        if k:
            # Pass k+1 starts from pass k's picture, pixel for pixel.
            assert np.array_equal(np.asarray(init), np.asarray(session.results[k - 1].image))
            # Colours are matched to the first init, not to the pass's own input.
            assert inputs.color_reference is session.before
        # Saved like a normal result, with which pass it was.
        saved = Image.open(item.path)
        text = saved.info["parameters"]
        assert text == item.infotext
        assert f"Loopback: pass {k + 1}/3" in text and f"Seed: {40 + k}" in text
        assert infotext.parse(text).params.strength == pytest.approx(0.5 * 0.8 ** k)
        assert saved.size == (W, H)
    assert len({item.path for item in session.results}) == 3
    gallery = final.gallery
    assert gallery["selected_index"] == 2
    assert [caption for _, caption in gallery["value"]] == [
        "pass 1/3 · seed 40", "pass 2/3 · seed 41", "pass 3/3 · seed 42"]
    # Send to init and Reuse seed act on the shown passes (the last one selected).
    assert studio.send_to_init(session) is session.results[2].image
    assert studio.reuse_seed(session) == 42 and studio.last_seed(session) == 40


def test_loopback_strength_stays_in_range():
    assert loopback.next_strength(0.9, 1.5) == 1.0
    assert loopback.next_strength(0.5, 0.5) == 0.25
    assert loopback.next_seed(P.MAX_SEED) == 0


def test_loopback_without_colour_correction(engine, monkeypatch):
    record = Recorder(engine, monkeypatch)
    list(run_loopback(Studio(engine), Session(), scene(), loopback_passes=2,
                      loopback_color_correction=False))
    assert [p.color_correction for p, _, _ in record.calls] == [False, False]


def test_interrupt_between_passes_starts_no_further_pass(engine, monkeypatch):
    studio, session = Studio(engine), Session()
    record = Recorder(engine, monkeypatch)
    views = []
    for view in run_loopback(studio, session, scene(), loopback_passes=4):
        views.append(view)
        if view.status.startswith("Pass 1/4 done"):
            studio.interrupt(session)  # between passes: no job is running
    final = views[-1]
    assert final.status.startswith("**Interrupted** after pass 1/4")
    assert len(record.calls) == 1 and len(session.results) == 1
    assert session.results[0].path.is_file()  # the finished pass stays saved and shown
    assert len(final.gallery["value"]) == 1


def test_interrupt_within_a_pass_keeps_the_passes_done(engine, monkeypatch):
    studio, session = Studio(engine), Session()
    record = Recorder(engine, monkeypatch)
    views = []
    for view in run_loopback(studio, session, scene(), steps=150, strength=1.0,
                             loopback_passes=3):
        views.append(view)
        if view.status.startswith("Pass 1/3 · Step"):
            studio.interrupt(session)
    final = views[-1]
    assert final.status.startswith("**Interrupted** in pass 1/3"), final.status
    assert "not saved" in final.status
    assert len(record.calls) == 1
    assert len(session.results) == 1 and session.results[0].path is None


@pytest.mark.parametrize("settings, message", [
    (dict(loopback_passes=1), r"^Loopback passes must be a whole number from 2 to 32 \(got 1\)"),
    (dict(loopback_passes=33), r"^Loopback passes must be a whole number from 2 to 32"),
    (dict(loopback_passes=2.5), r"^Loopback passes must be a whole number"),
    (dict(loopback_passes=True), r"^Loopback passes must be a whole number"),
    (dict(loopback_strength_factor=2), r"^Loopback strength factor must be a number from 0.5 "
                                       r"to 1.5 \(got 2\)"),
    (dict(loopback_strength_factor=float("nan")), r"^Loopback strength factor must be"),
    (dict(loopback_color_correction="yes"), r"^Loopback colour correction must be true or "
                                            r"false"),
    (dict(output_type="latent"), r"^Output type: loopback feeds each pass's picture"),
    (dict(strength=3), r"^Denoising strength must be a number from 0 to 1"),
])
def test_bad_loopback_values_name_the_field(engine, monkeypatch, settings, message):
    record = Recorder(engine, monkeypatch)
    views = []
    with pytest.raises(gr.Error) as caught:
        for view in run_loopback(Studio(engine), Session(), scene(), **settings):
            views.append(view)
    assert re.search(message, caught.value.message), caught.value.message
    assert views[-1].status.startswith("**Failed**")
    assert not record.calls


# -- the page ---------------------------------------------------------------------------------
def test_generate_takes_colour_correction_from_the_page(engine):
    final = list(Studio(engine).generate(Session(), scene(), steps=4, strength=0.5, seed=2,
                                         color_correction=True))[-1]
    assert "Color correction: True" in final.infotext


def test_the_page_wires_run_loopback(tmp_path):
    from webui.engine.core import Engine
    from webui.ui import app

    demo = app.build(Studio(Engine(models_dir=tmp_path, outputs_dir=tmp_path,
                                   model="tiny-random")))
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    assert {"loopback", "loopback_claim", "loopback_release"} <= set(fns)
    generate, loop = fns["img2img"], fns["loopback"]
    assert [b._id for b in loop.outputs] == [b._id for b in generate.outputs]
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"loopback-accordion", "loopback-run", "color-correction"} <= ids
