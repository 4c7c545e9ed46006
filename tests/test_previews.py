"""Step previews (webui/engine/previews.py): the rough colour-matrix previews by default, the
tiny VAE's (`--preview-decoder tiny`) where one is in models/VAE-approx, and the rule that
keeps previews to a small share of a job's time however slow their decoder is."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from webui.engine import JobRequest
from webui.engine import core as engine_core
from webui.engine import previews
from webui.engine.core import Engine
from webui.params import make


def tiny_vae(folder):
    """A small AutoencoderTiny (random weights) saved as a diffusers folder at `folder`."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                          decoder_block_out_channels=(8, 8, 8, 8),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    vae.save_pretrained(folder)
    return vae.eval()


def sampling_previews(engine, init, **settings):
    """(the job's Result, [(step, preview)] of its sampling progress)."""
    seen = []

    def keep(progress):
        if progress.stage == "sampling" and progress.preview is not None:
            seen.append((progress.step, progress.preview))

    result = engine.generate(JobRequest(make(**settings), init, save=False), on_progress=keep)
    return result, seen


@pytest.fixture
def tiny_engine(tmp_path):
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-random", preview_decoder="tiny")
    yield engine
    engine.cancel_all()
    engine.unload()


def test_previews_come_from_the_tiny_vae_when_it_is_asked_for_and_present(
        tiny_engine, tmp_path, monkeypatch):
    vae = tiny_vae(tmp_path / "models" / "VAE-approx" / "taesd")
    decoded = []  # the latents each preview was made from
    real = previews.TinyDecoder.__call__

    def spy(self, latents, **options):
        decoded.append(latents.detach().clone())
        return real(self, latents, **options)

    monkeypatch.setattr(previews.TinyDecoder, "__call__", spy)
    from PIL import Image

    init = Image.new("RGB", (96, 64), (200, 40, 30))
    result, seen = sampling_previews(tiny_engine, init, width=96, height=64, steps=4,
                                     strength=1.0, seed=3, pag_scale=0.0)
    assert "tiny VAE" not in (result.notice or "")
    assert seen and len(seen) == len(decoded)
    for (_, preview), latents in zip(seen, decoded):
        # The tiny VAE's own decoding of those latents, at the picture's size ...
        with torch.no_grad():
            expected = ((vae.decode(latents).sample + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        expected = expected[0].permute(1, 2, 0).numpy()
        assert preview.size == (96, 64)
        assert np.array_equal(np.asarray(preview), expected)
        # ... not the colour matrix's.
        rough = previews.latents_to_rgb(latents)[0]
        assert rough.size != preview.size or not np.array_equal(np.asarray(rough), expected)


def test_without_a_tiny_vae_the_rough_previews_are_shown_and_the_job_says_why(
        tiny_engine, tmp_path, init):
    result, seen = sampling_previews(tiny_engine, init, steps=2, strength=1.0, seed=1,
                                     pag_scale=0.0)
    assert seen  # previews all the same
    assert "previews are the rough ones: no tiny VAE for SD 1.x in models/VAE-approx/taesd" \
        in result.notice
    # One added meanwhile is found by the next job.
    tiny_vae(tmp_path / "models" / "VAE-approx" / "taesd")
    result, seen = sampling_previews(tiny_engine, init, steps=2, strength=1.0, seed=1,
                                     pag_scale=0.0)
    assert seen and "tiny VAE" not in (result.notice or "")


def test_a_broken_tiny_vae_never_fails_the_job(tiny_engine, tmp_path, init):
    folder = tmp_path / "models" / "VAE-approx" / "taesd"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    result, seen = sampling_previews(tiny_engine, init, steps=2, strength=1.0, seed=1,
                                     pag_scale=0.0)
    assert len(result.images) == 1 and seen
    assert "the tiny VAE in models/VAE-approx/taesd could not be loaded" in result.notice


def test_the_default_is_the_rough_previews_even_with_a_tiny_vae_present(tmp_path, init):
    tiny_vae(tmp_path / "models" / "VAE-approx" / "taesd")
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-random")
    try:
        result, seen = sampling_previews(engine, init, steps=2, strength=1.0, seed=1,
                                         pag_scale=0.0)
        make_preview, why = engine.step_previewer()
    finally:
        engine.unload()
    assert engine.preview_decoder == "approx" and why == "" and seen
    assert "tiny VAE" not in (result.notice or "")


def test_an_unknown_preview_decoder_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="preview_decoder must be one of approx, tiny"):
        Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
               device="cpu", preview_decoder="vae")


def test_a_large_tiny_vae_preview_is_sent_at_most_512_pixels_a_side(tmp_path):
    tiny_vae(tmp_path / "taesd")
    decoder = previews.TinyDecoder(tmp_path / "taesd", "cpu", torch.float32)
    (picture,) = decoder(torch.randn(1, 4, 96, 128))  # a 1024x768 picture's latents
    assert picture.size == (512, 384)


def test_slow_previews_take_a_small_share_of_the_job(tmp_path, init, monkeypatch):
    """A preview decoder that takes 0.1 s (the tiny VAE on a CPU at a large size): after each
    preview the next waits 19 times as long, so previews take at most 5 % of the time between
    them (the last step, whose result follows at once, is not given one regardless)."""
    tiny_vae(tmp_path / "models" / "VAE-approx" / "taesd")
    spans = []
    real = previews.TinyDecoder.__call__

    def slow(self, latents, **options):
        started = time.monotonic()
        time.sleep(0.1)
        out = real(self, latents, **options)
        spans.append((started, time.monotonic()))
        return out

    monkeypatch.setattr(previews.TinyDecoder, "__call__", slow)
    # A UNet step slowed to 0.2 s: the job lasts long enough for the rule to show.
    monkeypatch.setattr(engine_core, "PREVIEW_INTERVAL", 0.0)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-random", preview_decoder="tiny")
    try:
        pipe = engine.pipeline("tiny-random")
        pipe.unet.register_forward_pre_hook(lambda *_: time.sleep(0.2))
        result, seen = sampling_previews(engine, init, steps=12, strength=1.0, seed=1,
                                         pag_scale=0.0)
    finally:
        engine.unload()
    assert len(result.images) == 1
    steps = [step for step, _ in seen]
    assert steps[0] == 1 and 1 < len(steps) < 12
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start - end >= 0.1 * 19 * 0.95
