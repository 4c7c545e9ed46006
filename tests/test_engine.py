"""The engine on the CPU with the tiny-random models: every sampler, strength 0 / 1, seeds, batches,
output files and their infotext, progress, cancel, the queue, the resident pipeline and model errors.

Images are 32-64 px and jobs 1-4 steps, so each job takes a fraction of a second.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

from webui import images as imaging
from webui import infotext, schedulers
from webui.engine import JobRequest, core, outputs
from webui.engine.core import Engine, QueueFull
from webui.errors import Cancelled, InputError, ModelError
from webui.params import MAX_SEED, make
from webui.tiny import TINY_SD, TINY_SDXL

FILE_NAME = re.compile(r"^(\d{5})-(\d+)\.png$")


@pytest.fixture
def api(engine):
    """The engine under test, used only through the interface (webui.engine.EngineAPI): an
    engine served from other processes passes these tests with its own fixture."""
    return engine


@pytest.fixture
def fresh_api(fresh_engine):
    """As `api`, for an engine that has not loaded any model yet."""
    return fresh_engine


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def progress_and_result(api, request: JobRequest):
    """Every progress item of the job, then its result: the interface's generate takes no
    progress callback, so the tests read the job's updates."""
    job = api.submit(request)
    seen = list(job.updates())
    return seen, job.result()


def long_job(engine, make_image, **extra):
    """Submit a job that would take many seconds, and wait until it is sampling."""
    job = engine.submit(JobRequest(make(steps=150, strength=1.0, seed=3, **extra),
                                   make_image(64, 64, seed=9), save=False))
    for progress in job.updates(timeout=120):
        if progress.stage == "sampling":
            return job, progress
    raise AssertionError(f"the long job never started sampling (state {job.state})")


# -- every sampler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("class_name", list(schedulers.CLASS_NAMES))
def test_every_scheduler_class_runs(engine, make_image, class_name, strength):
    # The in-process engine itself: it reads the resident pipeline's scheduler.
    init = make_image(64, 64, seed=1)
    params = make(steps=4, strength=strength, seed=11, scheduler=class_name)
    assert params.scheduler == schedulers.CLASS_NAMES[class_name]
    result = engine.generate(JobRequest(params, init, save=False))
    assert result.effective_steps == int(4 * strength) >= 1
    assert not result.interrupted
    assert [img.seed for img in result.images] == [11]
    out = result.images[0].image
    assert isinstance(out, Image.Image)
    assert out.size == (64, 64) and (result.width, result.height) == (64, 64)
    assert out.tobytes() != init.tobytes()  # the pipeline really ran
    assert type(engine._pipe.scheduler).__name__ == class_name
    assert f"Denoising strength: {strength:g}" in result.images[0].infotext


# -- strength 0 and below one step -------------------------------------------------------------------
def test_strength_zero_returns_the_original_without_loading(fresh_api, make_image):
    init = make_image(80, 64, seed=2)
    result = fresh_api.generate(JobRequest(make(strength=0.0, seed=5), init, save=True))
    assert fresh_api.loaded_model() is None
    assert result.images[0].image.tobytes() == init.tobytes()
    assert result.images[0].image.size == (80, 64)
    assert result.effective_steps == 0
    assert "original" in result.notice
    # The saved file holds the same pixels.
    with Image.open(result.images[0].path) as saved:
        assert saved.convert("RGB").tobytes() == init.tobytes()


def test_strength_zero_returns_the_resized_original(fresh_api, make_image):
    init = make_image(64, 48, seed=3)
    params = make(strength=0.0, width=64, height=64, resize_mode="crop and resize", seed=1,
                  batch_size=2)
    result = fresh_api.generate(JobRequest(params, init, save=False))
    expected = imaging.fit(init, 64, 64, "crop and resize")
    assert [img.image.tobytes() for img in result.images] == [expected.tobytes()] * 2
    assert [img.seed for img in result.images] == [1, 2]
    assert fresh_api.loaded_model() is None


def test_below_one_step_returns_the_original_with_a_notice(fresh_api, make_image):
    init = make_image(64, 64, seed=4)
    params = make(steps=3, strength=0.3, seed=8)  # int(0.9) == 0 steps
    result = fresh_api.generate(JobRequest(params, init, save=False))
    assert result.images[0].image.tobytes() == init.tobytes()
    assert result.effective_steps == 0
    assert "below one step" in result.notice and "3 x 0.3" in result.notice
    assert fresh_api.loaded_model() is None


def test_seeds_wrap_around(fresh_api, make_image):
    result = fresh_api.generate(JobRequest(make(strength=0.0, seed=MAX_SEED, batch_size=2),
                                           make_image(32, 32), save=False))
    assert [img.seed for img in result.images] == [MAX_SEED, 0]


# -- what strength means ------------------------------------------------------------------------------
def test_strength_one_ignores_the_init_image(api, make_image):
    params = make(steps=4, strength=1.0, seed=21)
    a = api.generate(JobRequest(params, make_image(32, 32, seed=1),
                               save=False)).images[0].image
    b = api.generate(JobRequest(params, make_image(32, 32, seed=2),
                               save=False)).images[0].image
    assert a.tobytes() == b.tobytes()


def test_low_strength_follows_the_init_image(api, make_image):
    params = make(steps=4, strength=0.5, seed=21)
    a = api.generate(JobRequest(params, make_image(32, 32, seed=1),
                               save=False)).images[0].image
    b = api.generate(JobRequest(params, make_image(32, 32, seed=2),
                               save=False)).images[0].image
    assert a.tobytes() != b.tobytes()


# -- seeds ----------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files(api, make_image):
    params = make(prompt="a fox", steps=4, strength=0.5, seed=1234, scheduler="DPM++ SDE")
    first = api.generate(JobRequest(params, make_image(32, 32), save=True)).images[0].path
    second = api.generate(JobRequest(params, make_image(32, 32), save=True)).images[0].path
    assert first != second and first.exists() and second.exists()
    assert first.read_bytes() == second.read_bytes()


def test_random_seed_is_reported_and_reproduces(api, make_image):
    params = make(steps=4, strength=0.5, seed=-1)
    first = api.generate(JobRequest(params, make_image(32, 32), save=False))
    assert 0 <= first.seed <= MAX_SEED
    assert first.images[0].seed == first.seed
    assert f"Seed: {first.seed}," in first.images[0].infotext
    again = api.generate(JobRequest(params.replace(seed=first.seed), make_image(32, 32),
                                    save=False))
    assert again.images[0].image.tobytes() == first.images[0].image.tobytes()


def test_batches_use_consecutive_seeds_and_write_every_file(api, make_image):
    params = make(steps=2, strength=0.5, seed=100, batch_size=2, batch_count=2)
    result = api.generate(JobRequest(params, make_image(32, 32), save=True))
    seeds = [img.seed for img in result.images]
    assert seeds == [100, 101, 102, 103]
    assert result.seed == 100
    names = sorted(img.path.name for img in result.images)
    assert names == ["00000-100.png", "00001-101.png", "00002-102.png", "00003-103.png"]
    folder = result.images[0].path.parent
    assert sorted(p.name for p in folder.iterdir()) == names  # no temporary files left behind
    # Four different pictures.
    assert len({img.image.tobytes() for img in result.images}) == 4


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM++ SDE"])
def test_batch_image_k_reproduces_alone_with_seed_plus_k(api, make_image, scheduler):
    init = make_image(32, 32, seed=6)
    batch = api.generate(JobRequest(make(steps=4, strength=0.5, seed=10, batch_size=2,
                                         scheduler=scheduler), init, save=False))
    alone = api.generate(JobRequest(make(steps=4, strength=0.5, seed=11, scheduler=scheduler),
                                    init, save=False))
    # Batched arithmetic may differ in the last bit; a different noise would differ by far more.
    assert np.abs(pixels(batch.images[1].image) - pixels(alone.images[0].image)).max() <= 2


# -- output files ---------------------------------------------------------------------------------
def test_output_path_pattern(api, make_image):
    before = dt.date.today().isoformat()
    result = api.generate(JobRequest(make(steps=2, strength=0.5, seed=77), make_image(32, 32),
                                     save=True))
    after = dt.date.today().isoformat()
    path = result.images[0].path
    assert path.parent.parent == api.outputs_dir / "img2img"
    assert path.parent.name in (before, after)
    assert FILE_NAME.match(path.name)
    assert path.name == "00000-77.png"


def test_numbering_never_overwrites(api, make_image):
    folder = outputs.day_folder(api.outputs_dir)
    keep = folder / "00004-1.png"
    keep.write_bytes(b"an older picture")
    (folder / "notes.txt").write_text("not numbered")
    result = api.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                     save=True))
    assert result.images[0].path.name == "00005-1.png"
    assert keep.read_bytes() == b"an older picture"


def test_write_numbered_skips_a_taken_name(tmp_path, monkeypatch):
    (tmp_path / "00000-7.png").write_bytes(b"first")
    (tmp_path / "00001-7.png").write_bytes(b"second")
    # As if another writer took the names between the scan and the link.
    monkeypatch.setattr(outputs, "_next_number", lambda folder: 0)
    path = outputs.write_numbered(b"third", tmp_path, 7)
    assert path.name == "00002-7.png" and path.read_bytes() == b"third"
    assert (tmp_path / "00000-7.png").read_bytes() == b"first"
    assert (tmp_path / "00001-7.png").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-7.png", "00001-7.png", "00002-7.png"]


def test_png_infotext_parses_back_to_the_job(api, make_image):
    params = make(prompt='a red fox, "sly"\nin snow', negative_prompt="blurry, ugly", steps=4,
                  strength=0.5, guidance_scale=6.5, seed=-1, scheduler="DPM++ 2M Karras",
                  width=64, height=64, resize_mode="crop and resize")
    result = api.generate(JobRequest(params, make_image(96, 64, seed=4), save=True))
    item = result.images[0]
    with Image.open(item.path) as saved:
        assert saved.size == (64, 64)
        text = outputs.read_infotext(saved)
    assert text == item.infotext
    parsed = infotext.parse(text)
    assert parsed.warnings == []
    assert parsed.params == params.replace(seed=result.seed, width=64, height=64, model=TINY_SD)
    assert parsed.params.seed == item.seed == result.seed != -1


def test_inherited_size_is_written_into_the_infotext(api, make_image):
    result = api.generate(JobRequest(make(steps=2, strength=0.5, seed=3), make_image(71, 66),
                                     save=False))
    assert (result.width, result.height) == (64, 64)
    assert result.images[0].image.size == (64, 64)
    assert "Size: 64x64" in result.images[0].infotext


# -- progress -------------------------------------------------------------------------------------
def test_progress_reports_steps_and_previews(api, make_image):
    seen, result = progress_and_result(api, JobRequest(make(steps=4, strength=1.0, seed=2),
                                                       make_image(64, 64), save=True))
    stages = [p.stage for p in seen]
    assert stages[0] == "loading" and stages[-1] == "saving"
    sampling = [p for p in seen if p.stage == "sampling"]
    assert [p.step for p in sampling] == [1, 2, 3, 4]
    assert {p.total for p in sampling} == {result.effective_steps} == {4}
    # Previews are thinned to a few a second; the first and the last step always carry one.
    for p in (sampling[0], sampling[-1]):
        assert isinstance(p.preview, Image.Image)
        assert p.preview.width >= 8 and p.preview.height >= 8
    for p in sampling:
        assert p.preview is None or isinstance(p.preview, Image.Image)
        assert p.eta is not None and p.eta >= 0
        assert p.elapsed >= 0
    assert sampling[-1].eta == 0


def test_progress_of_a_low_strength_job(api, make_image):
    seen, result = progress_and_result(
        api, JobRequest(make(steps=8, strength=0.5, seed=2, batch_count=2), make_image(32, 32),
                        save=False))
    sampling = [p for p in seen if p.stage == "sampling"]
    assert result.effective_steps == 4
    assert [(p.batch_index, p.step, p.total, p.batch_count) for p in sampling] == [
        (b, s, 4, 2) for b in (0, 1) for s in (1, 2, 3, 4)]


# -- cancel and the queue ------------------------------------------------------------------------
def test_cancel_a_running_job(engine, make_image):
    # The in-process engine itself: it reads the job's state.
    job, first = long_job(engine, make_image)
    assert first.total == 150
    job.cancel()
    steps = [p.step for p in job.updates(timeout=120) if p.stage == "sampling"]
    try:
        result = job.result(timeout=60)
    except Cancelled:
        pass
    else:
        assert result.interrupted
        assert result.images and result.images[0].image.size == (64, 64)
    assert job.state == "cancelled"
    assert max([first.step, *steps]) < 150  # stopped early (the exact step is a race)
    # The engine carries on normally.
    after = engine.generate(JobRequest(make(steps=4, strength=0.5, seed=1), make_image(96, 64),
                                       save=False))
    assert not after.interrupted and len(after.images) == 1
    assert after.images[0].image.size == (96, 64)


def test_cancel_stops_within_one_step(engine, make_image, monkeypatch):
    # The in-process engine itself: it patches the worker's Job to cancel at a known step.
    emit = core.Job._emit

    def emit_and_cancel_at_step_2(job, progress):
        emit(job, progress)
        if progress.stage == "sampling" and progress.step == 2:
            job.cancel()  # as if the artist clicked during step 2: deterministic, in the worker

    monkeypatch.setattr(core.Job, "_emit", emit_and_cancel_at_step_2)
    seen = []
    result = engine.generate(JobRequest(make(steps=150, strength=1.0, seed=3), make_image(64, 64),
                                        save=True), on_progress=seen.append)
    assert [p.step for p in seen if p.stage == "sampling"] == [1, 2]
    assert result.interrupted
    assert result.images[0].image.size == (64, 64)  # the partial picture is still decoded


def _stop_at_unet_call(engine, monkeypatch, call: int, action: str) -> dict:
    """Hooks the resident UNet so that its `call`-th call asks the running job to `action`
    ('cancel' or 'skip') half way through; counts the calls that reached its last up block.
    The in-process engine itself: it hooks the resident UNet and patches the worker's Job."""
    emit = core.Job._emit
    jobs = []
    monkeypatch.setattr(core.Job, "_emit", lambda job, progress: (jobs.append(job),
                                                                  emit(job, progress)))
    unet = engine._pipe.unet
    calls = {"mid": 0, "last up": 0}

    def stop_there(module, args):
        calls["mid"] += 1
        if calls["mid"] == call:
            getattr(jobs[-1], action)()

    def count(module, args):
        calls["last up"] += 1

    calls["hooks"] = [unet.mid_block.register_forward_pre_hook(stop_there),
                      unet.up_blocks[-1].register_forward_pre_hook(count)]
    return calls


def test_cancel_during_a_step_leaves_it_and_keeps_the_last_finished_one(engine, make_image,
                                                                          monkeypatch):
    # The in-process engine itself: it hooks the resident UNet to cancel in the middle of a
    # step (as a click during a long step at a large size) and patches the worker's Job to
    # cancel between steps for the comparison.
    request = JobRequest(make(steps=6, strength=1.0, seed=5, pag_scale=0.0), make_image(96, 64),
                         save=False)
    emit = core.Job._emit

    def emit_and_cancel_after_step_2(job, progress):
        emit(job, progress)
        if progress.stage == "sampling" and progress.step == 2:
            job.cancel()

    monkeypatch.setattr(core.Job, "_emit", emit_and_cancel_after_step_2)
    between = engine.generate(request)
    monkeypatch.setattr(core.Job, "_emit", emit)
    calls = _stop_at_unet_call(engine, monkeypatch, 3, "cancel")  # half way through step 3
    seen = []
    try:
        within = engine.generate(request, on_progress=seen.append)
    finally:
        for hook in calls.pop("hooks"):
            hook.remove()
    assert calls == {"mid": 3, "last up": 2}  # the third step's UNet call went no further
    assert [p.step for p in seen if p.stage == "sampling"] == [1, 2]
    assert within.interrupted and between.interrupted
    # The picture is the one decoded after step 2, as a stop between steps gives it.
    assert within.images[0].image.size == (96, 64)
    assert np.array_equal(pixels(within.images[0].image), pixels(between.images[0].image))
    # The UNet is itself again: no hook of the stop is left, and the next job runs whole.
    unet = engine._pipe.unet
    assert "forward" not in unet.__dict__
    assert not any(block._forward_pre_hooks for block in unet.modules()
                   if type(block).__name__ in ("ResnetBlock2D", "Transformer2DModel"))
    after = engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(64, 96),
                                       save=False))
    assert not after.interrupted and after.images[0].image.size == (64, 96)


def test_cancel_during_the_first_step_ends_the_job_with_nothing_sampled(engine, make_image,
                                                                        monkeypatch):
    engine.generate(JobRequest(make(steps=1, strength=1.0), make_image(64, 64), save=False))
    calls = _stop_at_unet_call(engine, monkeypatch, 1, "cancel")
    try:
        with pytest.raises(Cancelled, match="before the first image"):
            engine.generate(JobRequest(make(steps=6, strength=1.0, seed=5, pag_scale=0.0),
                                       make_image(96, 64), save=True))
    finally:
        for hook in calls.pop("hooks"):
            hook.remove()
    assert calls == {"mid": 1, "last up": 0}  # the first step went no further
    assert not (engine.outputs_dir / "img2img").exists()  # nothing was saved
    after = engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(96, 64),
                                       save=False))
    assert not after.interrupted and after.images[0].image.size == (96, 64)


@pytest.mark.parametrize("action", ["cancel", "skip"])
def test_a_stop_in_a_batchs_first_step_keeps_the_other_batches(engine, make_image,
                                                               monkeypatch, action):
    init = make_image(96, 64)
    request = JobRequest(make(steps=4, strength=1.0, seed=20, batch_count=2, pag_scale=0.0),
                         init, save=False)
    whole = engine.generate(request)
    # Interrupt in the first step of the second batch; Skip in the first step of the first.
    call = 5 if action == "cancel" else 1
    calls = _stop_at_unet_call(engine, monkeypatch, call, action)
    try:
        stopped = engine.generate(request)
    finally:
        for hook in calls.pop("hooks"):
            hook.remove()
    assert calls["last up"] == 4  # one batch's steps only
    assert len(stopped.images) == 1
    kept = 0 if action == "cancel" else 1  # the batch that ran whole
    assert stopped.images[0].seed == whole.images[kept].seed
    assert np.array_equal(pixels(stopped.images[0].image), pixels(whole.images[kept].image))
    assert stopped.interrupted is (action == "cancel")


def test_cancel_a_queued_job(engine, make_image):
    # The in-process engine itself: it reads the jobs' state and waits on their _done events.
    running, _ = long_job(engine, make_image)
    queued = engine.submit(JobRequest(make(steps=4, strength=0.5, seed=1), make_image(32, 32),
                                      save=True))
    assert queued.state == "queued"
    assert queued.position() == 1
    queued.cancel()
    # It ends at once, while the job ahead of it is still sampling.
    with pytest.raises(Cancelled):
        queued.result(timeout=10)
    assert queued.state == "cancelled"
    assert not running._done.is_set()
    running.cancel()
    running._done.wait(60)
    assert not (engine.outputs_dir / "img2img").exists()  # the queued job never wrote anything
    after = engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                       save=False))
    assert not after.interrupted


def test_cancel_all_finishes_waiting_jobs_and_stops_the_running_one(engine, make_image):
    # The in-process engine itself: it waits on the running job's _done event and reads its state.
    running, _ = long_job(engine, make_image)
    waiting = [engine.submit(JobRequest(make(steps=2, strength=0.5, seed=s), make_image(32, 32),
                                        save=False))
               for s in (1, 2)]
    done = threading.Event()
    threading.Thread(target=lambda: (engine.cancel_all(), done.set()), daemon=True).start()
    assert done.wait(10), "cancel_all did not return"
    for job in waiting:
        with pytest.raises(Cancelled):
            job.result(timeout=10)
    assert running._done.wait(60), "the running job did not stop"
    assert running.state == "cancelled"


def test_queue_full(engine, make_image, monkeypatch):
    # The in-process engine itself: it waits on the running job's _done event.
    monkeypatch.setattr(engine, "queue_size", 1)
    running, _ = long_job(engine, make_image)
    waiting = engine.submit(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                       save=False))
    with pytest.raises(QueueFull) as info:
        engine.submit(JobRequest(make(steps=2, strength=0.5, seed=2), make_image(32, 32),
                                 save=False))
    assert "busy" in str(info.value)
    waiting.cancel()
    running.cancel()
    running._done.wait(60)
    # Room again.
    assert engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                      save=False)).images


def test_submit_needs_params(api, make_image):
    with pytest.raises(TypeError):
        api.submit(JobRequest({"strength": 0.5}, make_image(32, 32)))


# -- the resident pipeline -------------------------------------------------------------------------
def test_pipeline_stays_resident_across_schedulers(engine, make_image):
    # The in-process engine itself: it reads the resident pipeline.
    engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1, scheduler="Euler a"),
                               make_image(32, 32), save=False))
    pipe = engine._pipe
    assert engine.loaded_model() == TINY_SD
    engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1, scheduler="DDIM"),
                               make_image(32, 32), save=False))
    assert engine._pipe is pipe
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1, scheduler="DPM++ 2M Karras"),
                               make_image(32, 32), save=False))
    assert engine._pipe is pipe
    assert pipe.scheduler.config.use_karras_sigmas is True


def test_an_exponential_schedule_changes_the_picture(engine, make_image):
    # The in-process engine itself: it reads the resident pipeline's scheduler.
    init = make_image(96, 64)
    runs = {}
    for name in ("DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M Exponential"):
        runs[name] = engine.generate(JobRequest(make(steps=6, strength=0.8, seed=4,
                                                     scheduler=name), init, save=False))
        config = engine._pipe.scheduler.config
        assert config.use_exponential_sigmas is name.endswith("Exponential")
        assert config.use_karras_sigmas is name.endswith("Karras")
    exponential = runs["DPM++ 2M Exponential"]
    assert "Sampler: DPM++ 2M, Schedule type: Exponential" in exponential.images[0].infotext
    pictures = [pixels(r.images[0].image) for r in runs.values()]
    assert not np.array_equal(pictures[2], pictures[0])
    assert not np.array_equal(pictures[2], pictures[1])


def test_sdxl_tiny_model_runs(fresh_engine, make_image):
    # The in-process engine itself: it reads the resident pipeline's class.
    params = make(prompt="a fox", steps=2, strength=0.5, seed=4, model=TINY_SDXL)
    result = fresh_engine.generate(JobRequest(params, make_image(64, 64), save=True))
    assert fresh_engine.loaded_model() == TINY_SDXL
    assert type(fresh_engine._pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert result.model == TINY_SDXL
    assert result.images[0].image.size == (64, 64)
    assert result.images[0].path.exists()
    assert f"Model: {TINY_SDXL}" in result.images[0].infotext


# -- the prompt reaches the model -----------------------------------------------------------------
@pytest.mark.parametrize("model", [TINY_SD, TINY_SDXL])
def test_prompt_and_negative_prompt_change_the_picture(api, make_image, model):
    """The tiny models' tokenizers know their vocabulary, so the prompt reaches the model: two
    prompts (or negative prompts) give two pictures, the same prompt the same picture."""
    init = make_image(96, 64, seed=2)

    def picture(**settings):
        params = make(steps=4, strength=0.8, seed=5, pag_scale=0.0, model=model, **settings)
        return pixels(api.generate(JobRequest(params, init, save=False)).images[0].image)

    cat, dog, junk = picture(prompt="a cat"), picture(prompt="a dog"), picture(prompt="zzzz qqqq")
    assert not np.array_equal(cat, dog) and not np.array_equal(cat, junk)
    assert np.array_equal(cat, picture(prompt="a cat"))
    assert not np.array_equal(picture(prompt="a cat", negative_prompt="blurry"),
                              picture(prompt="a cat", negative_prompt="sharp"))
    api.unload()


@pytest.mark.parametrize("model", [TINY_SD, TINY_SDXL])
def test_tiny_tokenizers_know_their_vocabulary(engine, model, tmp_path):
    # The in-process engine itself: it reads the pipeline's tokenizers.
    from transformers import AutoTokenizer

    pipe = engine.pipeline(model)
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if model == TINY_SDXL else [])
    for tokenizer in tokenizers:
        assert tokenizer("a cat").input_ids != tokenizer("a dog").input_ids
        # No unknown token between the start and end tokens.
        assert tokenizer.unk_token_id not in tokenizer("a cat, zzzz qqqq").input_ids[1:-1]
        # The saved tokenizer (as in a diffusers folder or a single file's config folder)
        # reads the same.
        tokenizer.save_pretrained(tmp_path / "tok")
        again = AutoTokenizer.from_pretrained(tmp_path / "tok")
        assert again("a cat").input_ids == tokenizer("a cat").input_ids
    engine.unload()


def test_outputs_that_cannot_be_written_still_give_the_images(api, make_image, tmp_path,
                                                              monkeypatch):
    """A read-only, missing or full outputs folder: the job still returns its pictures, says
    they were not saved and why (no server path in the message), and writes no half file."""
    import errno

    from webui.engine import outputs

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outputs folder should be")
    api.outputs_dir = blocker
    result = api.generate(JobRequest(make(steps=2, seed=4), make_image(96, 64)))
    assert result.images[0].image.size == (96, 64) and result.images[0].path is None
    assert "not saved" in result.notice and str(tmp_path) not in result.notice
    # A disk that fills up half-way through a batch: the first image is saved, the rest shown.
    api.outputs_dir = tmp_path / "outputs"
    real, calls = outputs.write_numbered, []

    def fills_up(data, folder, seed, suffix=".png"):
        calls.append(seed)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(data, folder, seed, suffix)

    monkeypatch.setattr(outputs, "write_numbered", fills_up)
    result = api.generate(JobRequest(make(steps=2, seed=4, batch_size=2), make_image()))
    assert [item.path is not None for item in result.images] == [True, False]
    assert "No space left on device" in result.notice and "1 of 2" in result.notice
    assert len(list((tmp_path / "outputs").rglob("*"))) == 3  # img2img/, the day, one PNG


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_model_name(api, make_image):
    # As the command line asks (allow_paths): the studio refuses an unlisted name before the
    # model lookup this test is about (test_engine_interface).
    with pytest.raises(ModelError) as info:
        api.generate(JobRequest(make(steps=2, strength=0.5, model="no-such-model"),
                                make_image(32, 32), allow_paths=True))
    assert "unknown model 'no-such-model'" in str(info.value)
    assert TINY_SD in str(info.value)  # says what is available


@pytest.mark.parametrize("exists", [True, False])
def test_pickle_checkpoint_refused(api, make_image, tmp_path, exists):
    path = tmp_path / "model.ckpt"
    if exists:
        path.write_bytes(b"not really a pickle")
    with pytest.raises(ModelError) as info:
        api.generate(JobRequest(make(steps=2, strength=0.5, model=str(path)), make_image(32, 32),
                                allow_paths=True))  # a checkpoint file by path
    assert "pickle" in str(info.value)
    assert "safetensors" in str(info.value)


def test_hub_id_offline_fails_clearly(api, make_image, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # As the command line asks (allow_paths): the studio takes only the hub ids it lists.
    job = api.submit(JobRequest(make(steps=2, strength=0.5, model="someone/not-cached-model"),
                                make_image(32, 32), save=False, allow_paths=True))
    with pytest.raises(ModelError) as info:
        job.result(timeout=300)  # a hang would fail here, not block the suite
    message = str(info.value)
    assert "someone/not-cached-model" in message
    assert "offline" in message and "HF_HUB_OFFLINE" in message


def test_a_model_switch_takes_its_turn_in_the_queue(engine, make_image, monkeypatch):
    # The in-process engine itself: it records what its worker does, in order, and reads the
    # queue to know the switch is in it.
    log = []
    run, pipeline = engine._run, engine.pipeline
    monkeypatch.setattr(engine, "_run", lambda job: (log.append(("job", job.id)), run(job))[1])
    monkeypatch.setattr(engine, "pipeline", lambda name="", *a, **k: (
        log.append(("load", name)), pipeline(name, *a, **k))[1])
    running, _ = long_job(engine, make_image)
    before = engine.submit(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                      save=False))
    switched = []
    switch = threading.Thread(target=lambda: switched.append(engine.load_model(TINY_SDXL)))
    switch.start()
    deadline = time.monotonic() + 30
    while not any(isinstance(item, core._LoadTurn) for item in list(engine._queue.queue)):
        assert time.monotonic() < deadline, "the switch never reached the queue"
        time.sleep(0.01)
    # While the long job runs, the switch waits (no model is loaded beside a job).
    assert switch.is_alive() and engine.loaded_model() == TINY_SD
    after = engine.submit(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                     save=False))
    running.cancel()
    switch.join(120)
    assert switched == [TINY_SDXL]
    before.result(timeout=60), after.result(timeout=60)
    order = [entry for entry in log if entry == ("load", TINY_SDXL) or
             (entry[0] == "job" and entry[1] != running.id)]
    assert order == [("job", before.id), ("load", TINY_SDXL), ("job", after.id)]
    # Every job is still counted as before: the switch is no queue place of its own.
    assert engine.queue_status().waiting == 0


def test_cancel_all_also_cancels_a_model_switch_waiting_its_turn(engine, make_image):
    # The in-process engine itself: it reads the queue to know the switch is in it.
    running, _ = long_job(engine, make_image)
    outcome = []

    def switch():
        try:
            outcome.append(engine.load_model(TINY_SDXL))
        except Cancelled as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=switch)
    waiting.start()
    deadline = time.monotonic() + 30
    while not any(isinstance(item, core._LoadTurn) for item in list(engine._queue.queue)):
        assert time.monotonic() < deadline, "the switch never reached the queue"
        time.sleep(0.01)
    engine.cancel_all()  # as the studio does when it is stopped
    waiting.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    assert "stopping" in str(outcome[0])
    running._done.wait(60)
    # The switch never ran: the resident model is the one the cancelled job had.
    assert engine.loaded_model() == TINY_SD
    after = engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                                       save=False))
    assert not after.interrupted


def test_a_model_that_fails_to_load_keeps_the_working_one(fresh_engine, make_image, tmp_path):
    # The in-process engine itself: it reads the resident pipeline.
    engine = fresh_engine
    params = make(steps=2, strength=0.5, seed=1, pag_scale=0)
    before = engine.generate(JobRequest(params, make_image(48, 32), save=False)).images[0].image
    pipe = engine._pipe
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError) as info:
        engine.generate(JobRequest(params.replace(model=str(broken)), make_image(48, 32),
                                   save=False, allow_paths=True))  # a checkpoint file by path
    assert "still loaded" in str(info.value) and TINY_SD in str(info.value)
    assert engine._pipe is pipe and engine.loaded_model() == TINY_SD  # not even reloaded
    after = engine.generate(JobRequest(params, make_image(48, 32), save=False)).images[0].image
    assert after.tobytes() == before.tobytes()


def test_a_model_that_cannot_be_placed_brings_the_previous_one_back(fresh_engine, make_image,
                                                                   monkeypatch):
    from webui.engine import memory

    # The in-process engine itself: it patches how the engine places a pipeline on the device.
    engine = fresh_engine
    params = make(steps=2, strength=0.5, seed=1, pag_scale=0)
    before = engine.generate(JobRequest(params, make_image(48, 32), save=False)).images[0].image
    real = memory.place

    def full(pipe, device, offload):
        if getattr(pipe, "text_encoder_2", None) is not None:  # the SDXL model does not fit
            raise RuntimeError("out of memory (simulated)")
        return real(pipe, device, offload)

    monkeypatch.setattr(memory, "place", full)
    with pytest.raises(ModelError, match=f"{TINY_SD} was loaded again"):
        engine.generate(JobRequest(params.replace(model=TINY_SDXL), make_image(48, 32),
                                   save=False))
    assert engine.loaded_model() == TINY_SD
    after = engine.generate(JobRequest(params, make_image(48, 32), save=False)).images[0].image
    assert after.tobytes() == before.tobytes()


def test_fp16_on_the_cpu(engine, make_image):
    # The in-process engine itself: it reads the resident pipeline.
    engine.generate(JobRequest(make(steps=2, strength=0.5, seed=1), make_image(32, 32),
                               save=False))
    pipe = engine._pipe
    with pytest.raises(InputError) as info:
        engine.generate(JobRequest(make(steps=2, strength=0.5, dtype="fp16"), make_image(32, 32)))
    assert info.value.field == "dtype"
    assert "fp16" in str(info.value) and "fp32" in str(info.value)
    assert engine._pipe is pipe  # the resident pipeline survives the refusal


def test_bad_init_image_is_an_input_error(engine, tmp_path):
    # The in-process engine itself: only it reads an init image from a path on its machine.
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(InputError) as info:
        engine.generate(JobRequest(make(steps=2, strength=0.5), path))
    assert info.value.field == "init_image"
    assert "not an image file" in str(info.value)


def test_explicit_size_over_the_engine_limit(tmp_path, make_image):
    # The in-process engine itself: it is built with its own pixel limit.
    small = Engine(models_dir=tmp_path / "m", outputs_dir=tmp_path / "o", device="cpu",
                   max_pixels=64 * 64)
    with pytest.raises(InputError) as info:
        small.generate(JobRequest(make(strength=0.0, width=128, height=128), make_image(32, 32)))
    assert "128x128" in str(info.value)
    # An inherited size is scaled down instead.
    result = small.generate(JobRequest(make(strength=0.0), make_image(128, 64), save=False))
    assert result.width * result.height <= 64 * 64


# -- threads ------------------------------------------------------------------------------------
def test_detectors_are_built_once_when_asked_from_two_threads(tmp_path, monkeypatch):
    # The in-process engine itself: its lazily built detectors, from threads.
    built = []

    class SlowDetectors:
        def __init__(self, device):
            time.sleep(0.05)  # wide open for a second caller
            built.append(self)

    monkeypatch.setattr(core, "Detectors", SlowDetectors)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", device="cpu")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(engine.detectors)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and all(d is built[0] for d in seen)


def test_a_detector_preview_waits_for_the_running_job(tmp_path, make_image):
    # The in-process engine itself: a preview on one thread beside the worker's job.
    from tests.support.tiny_adapters import make_depth_detector

    make_depth_detector(tmp_path / "models" / "ControlNet-preprocessors" / "tiny-depth", seed=7)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", device="cpu")
    try:
        job, _ = long_job(engine, make_image)
        finished = []

        def preview():
            engine.control_preview(make_image(64, 64, seed=1), "depth")
            finished.append(job.done)

        thread = threading.Thread(target=preview)
        thread.start()
        thread.join(1.0)
        assert not finished, "the preview ran its detector beside the running job"
        job.cancel()
        thread.join(60)
        assert finished == [True]
        # Canny needs no model and no device: it never waits.
        job, _ = long_job(engine, make_image)
        assert engine.control_preview(make_image(64, 64), "canny").size == (64, 64)
        assert not job.done
        job.cancel()
        assert job.result(timeout=60).interrupted
    finally:
        engine.cancel_all()
        engine.unload()
