"""Text-to-image jobs (JobRequest.task = "txt2img"), a skip that ends one batch, and what a front
door reads of whatever job runs (running_job, last_progress, last_preview) and of memory.

The REST API's txt2img route rests on these; they are engine behaviour, so they are tested here
against the interface, on the tiny models at sizes other than their default.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine import TASKS, TXT2IMG_DEFAULT_SIZE, EngineAPI, JobRequest
from webui.engine.core import Engine, text_size
from webui.errors import InputError
from webui.params import make
from webui.tiny import TINY_SD, TINY_SDXL


@pytest.fixture
def api(engine) -> EngineAPI:
    return engine


def text_job(**settings) -> JobRequest:
    settings = {"steps": 2, "seed": 5, "prompt": "a red fox", **settings}
    return JobRequest(make(**settings), None, save=False, task="txt2img")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


# -- text-to-image -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", [TINY_SD, TINY_SDXL])
def test_txt2img_makes_a_picture_of_the_asked_size(api, model):
    result = api.generate(text_job(width=96, height=64, model=model))
    assert [i.image.size for i in result.images] == [(96, 64)]
    assert (result.width, result.height) == (96, 64)
    assert result.params.strength == 1.0  # every step runs: nothing is denoised part-way
    assert "Denoising strength: 1," in result.images[0].infotext
    assert "Size: 96x64" in result.images[0].infotext


def test_txt2img_equals_the_librarys_text_to_image_pipeline(engine):
    # The in-process engine itself: the library's pipeline is built from its resident one.
    from diffusers import AutoPipelineForText2Image

    from webui import schedulers

    result = engine.generate(text_job(width=64, height=96, seed=11, pag_scale=0, steps=3))
    plain = AutoPipelineForText2Image.from_pipe(engine._pipe)
    plain.scheduler = schedulers.build(result.params.scheduler, engine._base_scheduler_config, 11)
    expected = plain(prompt="a red fox", negative_prompt=result.params.negative_prompt,
                     width=64, height=96, num_inference_steps=3,
                     guidance_scale=result.params.guidance_scale,
                     generator=[torch.Generator("cpu").manual_seed(11)]).images[0]
    assert np.abs(pixels(result.images[0].image) - pixels(expected)).max() <= 1


def test_txt2img_shares_the_resident_models_weights(engine):
    # The in-process engine itself: it compares the modules of the pipelines it keeps.
    engine.generate(text_job(width=64, height=64))
    base = engine._pipe
    pipelines = [pipe for (mode, _, _), pipe in engine.adapters._pipes.items()
                 if mode == "txt2img"]
    assert pipelines, "the text-to-image pipeline is kept for the next job"
    for pipe in pipelines:
        assert pipe.unet is base.unet and pipe.vae is base.vae
        assert pipe.text_encoder is base.text_encoder


def test_txt2img_reproduces_with_its_seed_and_follows_the_prompt(api):
    first = api.generate(text_job(seed=21, width=64, height=64))
    again = api.generate(text_job(seed=21, width=64, height=64))
    other_seed = api.generate(text_job(seed=22, width=64, height=64))
    other_prompt = api.generate(text_job(seed=21, width=64, height=64, prompt="a blue whale"))
    a = pixels(first.images[0].image)
    assert np.array_equal(a, pixels(again.images[0].image))
    assert not np.array_equal(a, pixels(other_seed.images[0].image))
    assert not np.array_equal(a, pixels(other_prompt.images[0].image))


def test_txt2img_batches_use_consecutive_seeds(api):
    batch = api.generate(text_job(seed=40, width=64, height=64, batch_size=2))
    assert [i.seed for i in batch.images] == [40, 41]
    alone = api.generate(text_job(seed=41, width=64, height=64))
    assert np.abs(pixels(batch.images[1].image) - pixels(alone.images[0].image)).max() <= 2


def test_txt2img_default_size_and_snapping():
    assert text_size(None, None) == (TXT2IMG_DEFAULT_SIZE, TXT2IMG_DEFAULT_SIZE)
    assert text_size(768, None) == (768, TXT2IMG_DEFAULT_SIZE)
    width, height = text_size(100, 70)
    assert width % 8 == 0 and height % 8 == 0 and abs(width - 100) < 8 and abs(height - 70) < 8
    # A size not asked for is scaled down to the engine's limit; an explicit one over it refused.
    small = text_size(None, None, max_pixels=64 * 64)
    assert small[0] * small[1] <= 64 * 64
    with pytest.raises(InputError, match="width|height|pixels"):
        text_size(4096, 4096, max_pixels=512 * 512)


@pytest.mark.parametrize("field", ["init_image", "mask", "latents"])
def test_txt2img_refuses_what_needs_a_picture(api, field):
    picture = Image.new("RGB", (64, 64))
    params = text_job().params
    request = {"init_image": JobRequest(params, picture, save=False, task="txt2img"),
               "mask": JobRequest(params, None, mask=Image.new("L", (64, 64)), save=False,
                                  task="txt2img"),
               "latents": JobRequest(params, None, latents=b"not read", save=False,
                                     task="txt2img")}[field]
    with pytest.raises(InputError) as refused:
        api.submit(request)
    assert refused.value.field == field
    assert api.generate(text_job(width=64, height=64)).images  # still serving


@pytest.fixture
def controlnet_api(fresh_engine):
    from tests.support.tiny_adapters import make_controlnet
    from webui.tiny import build_pipeline

    make_controlnet(build_pipeline(TINY_SD), fresh_engine.models_dir / "ControlNet" / "edges",
                    seed=4)
    return fresh_engine


@pytest.mark.parametrize("pag_scale", [0.0, 3.0])
def test_txt2img_follows_an_uploaded_control_picture(controlnet_api, pag_scale):
    control = Image.new("RGB", (48, 80), "black")
    control.paste("white", (10, 20, 38, 60))
    unit = {"model": "edges", "source": "upload", "preprocessor": "canny"}
    with_cn = controlnet_api.generate(JobRequest(
        make(steps=3, seed=8, width=64, height=96, pag_scale=pag_scale, controlnets=[unit]),
        None, control_images=[control], save=False, task="txt2img"))
    plain = controlnet_api.generate(text_job(steps=3, seed=8, width=64, height=96,
                                             pag_scale=pag_scale))
    assert with_cn.images[0].image.size == (64, 96)
    assert "ControlNet 0" in with_cn.images[0].infotext
    assert not np.array_equal(pixels(with_cn.images[0].image), pixels(plain.images[0].image))
    # Its source cannot be the init image: a txt2img job has none.
    with pytest.raises(InputError, match="upload a control image") as refused:
        controlnet_api.submit(JobRequest(make(steps=2, controlnets=[{"model": "edges"}]), None,
                                         save=False, task="txt2img"))
    assert refused.value.field == "controlnets[0]"


def test_an_unknown_task_is_refused_naming_it(api):
    request = JobRequest(make(steps=1), Image.new("RGB", (64, 64)), save=False, task="upscale")
    with pytest.raises(InputError, match="task must be one of: " + ", ".join(TASKS)) as refused:
        api.submit(request)
    assert refused.value.field == "task"


def test_an_inpainting_model_refuses_txt2img_and_keeps_serving(tmp_path):
    from tests.support.testing import tiny_inpainting_pipeline

    folder = tmp_path / "models" / "Stable-diffusion" / "tiny-inpainting"
    tiny_inpainting_pipeline().save_pretrained(folder)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-inpainting")
    try:
        with pytest.raises(InputError, match="inpainting model"):
            engine.generate(text_job(width=64, height=64))
        assert engine.generate(JobRequest(make(steps=2, strength=0.5), Image.new("RGB", (64, 64)),
                                          save=False)).images
    finally:
        engine.unload()


# -- skip ----------------------------------------------------------------------------------------
def test_skip_ends_the_batch_being_sampled_and_the_job_goes_on(api, make_image):
    job = api.submit(JobRequest(make(steps=40, strength=1.0, seed=3, batch_count=2),
                                make_image(96, 64), save=False))
    sampling = []
    for progress in job.updates(timeout=120):
        if progress.stage != "sampling":
            continue
        sampling.append((progress.batch_index, progress.step))
        if progress.batch_index == 0 and progress.step == 2:
            job.skip()
    result = job.result(timeout=120)
    first = [step for batch, step in sampling if batch == 0]
    second = [step for batch, step in sampling if batch == 1]
    assert max(first) < 40  # the first batch stopped early ...
    assert second == list(range(1, 41))  # ... and the second ran every step
    assert not result.interrupted
    assert [i.seed for i in result.images] == [3, 4]
    assert all(i.image.size == (96, 64) for i in result.images)


# -- what a front door reads of the running job --------------------------------------------------
def test_the_running_job_shows_its_progress_and_latest_preview(api, make_image):
    assert api.running_job() is None or api.running_job().done
    before = time.time()
    job = api.submit(JobRequest(make(steps=150, strength=1.0, seed=3), make_image(64, 64),
                                save=False, owner="ann"))
    assert before <= job.created <= time.time()
    try:
        for progress in job.updates(timeout=120):
            if progress.stage == "sampling" and progress.preview is not None:
                break
        running = api.running_job()
        assert running is not None and running.id == job.id and running.owner == "ann"
        assert running.last_progress is not None and running.last_progress.stage == "sampling"
        assert isinstance(running.last_preview, Image.Image)
    finally:
        job.cancel()
    deadline = time.time() + 60
    while not job.done and time.time() < deadline:
        time.sleep(0.05)
    assert job.done and (api.running_job() is None or api.running_job().id != job.id)


def test_memory_status_on_the_cpu(api):
    status = api.memory_status()
    assert status["cuda"] is None  # the tests' engine runs on the CPU
    ram = status["ram"]
    assert ram["total"] > 0 and 0 <= ram["free"] <= ram["total"]
    assert ram["used"] == ram["total"] - ram["free"]
    assert status["process_rss"] > 0
