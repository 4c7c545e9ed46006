"""Limits that keep one user from taking the GPU (webui/engine/limits.py and the launch flags):
a job over --max-pixels, --max-steps or --max-batch is refused when submitted, with the limit and
its flag named and nothing queued; a user at --max-queued-per-user gets the busy answer while
others still get in; a job past --job-timeout is stopped like an Interrupt and says why; the
REST API refuses a body over --max-upload-mb; bad flag values stop the launch."""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui import presets
from webui.api import ApiService, create_app
from webui.engine import InputError, JobRequest, Limits, QueueFull, TimedOut
from webui.params import make
from webui.ui import launch


@pytest.fixture
def limited(tmp_path):
    """An engine with small limits (its own, so the shared engine keeps the defaults)."""
    from webui.engine.core import Engine

    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", limits=Limits(max_pixels=128 * 128, max_steps=40, max_batch=4,
                                                max_queued_per_user=2, job_timeout=0))
    yield engine
    engine.cancel_all()
    engine.unload()


def picture(width=64, height=64):
    return Image.new("RGB", (width, height), (200, 60, 30))


@pytest.mark.parametrize("settings, field, flag", [
    (dict(steps=41), "steps", "--max-steps"),
    (dict(batch_count=3, batch_size=2), "batch_count", "--max-batch"),
    (dict(width=256, height=128), "width", "--max-pixels"),
    (dict(width=512), "width", "--max-pixels"),  # one side alone, the other at least 64
])
def test_a_job_over_a_limit_is_refused_at_submit(limited, settings, field, flag):
    with pytest.raises(InputError) as caught:
        limited.submit(JobRequest(make(**settings), picture(), save=False))
    assert caught.value.field == field and flag in str(caught.value)
    assert limited.queue_status().waiting == 0 and limited.running_job() is None


def test_jobs_at_the_limits_run_and_a_large_init_image_is_scaled_down(limited):
    result = limited.generate(JobRequest(make(steps=40, strength=0.05, batch_count=2,
                                              batch_size=2), picture(1024, 512), save=False))
    assert len(result.images) == 4
    assert result.width * result.height <= 128 * 128 and result.width == 2 * result.height


def test_the_default_limits_fit_a_shared_studio(engine):
    assert engine.limits == Limits()
    with pytest.raises(InputError, match="--max-pixels"):
        engine.submit(JobRequest(make(width=4096, height=4096), picture(), save=False))
    # 4096 wide on a 64 px square picture was a 4096x4096 job; the inherited height now
    # shrinks both sides to the limit (planned here, not run: a 2048x2048 job on the CPU).
    from webui import images

    width, height = images.target_size(picture(), 4096, None, engine.max_pixels)
    assert width == height and width * height <= Limits().max_pixels


def test_one_user_at_the_queue_limit_is_busy_and_another_gets_in(limited):
    long = make(steps=40, strength=1.0)
    mine = [limited.submit(JobRequest(long, picture(192, 96), save=False, owner="ann"))
            for _ in range(2)]
    with pytest.raises(QueueFull, match="--max-queued-per-user 2"):
        limited.submit(JobRequest(long, picture(), save=False, owner="ann"))
    other = limited.submit(JobRequest(make(steps=1), picture(), save=False, owner="bob"))
    for job in mine:
        job.cancel()
    assert other.result(60).images
    # Once ann's jobs have ended she may queue again.
    assert limited.generate(JobRequest(make(steps=1), picture(), save=False, owner="ann")).images


def test_a_job_past_its_time_budget_stops_like_an_interrupt(tmp_path):
    from webui.engine.core import Engine

    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", limits=Limits(job_timeout=1.0))
    try:
        engine.pipeline()  # loaded: the budget is spent sampling
        started = time.monotonic()
        job = engine.submit(JobRequest(make(steps=150, strength=1.0), picture(192, 192)))
        result = job.result(60)
        assert time.monotonic() - started < 30
        assert result.interrupted and result.images  # what was sampled by then is kept
        assert "--job-timeout" in result.notice and "stopped after 1 s" in result.notice
        assert not list((tmp_path / "outputs").rglob("*.png"))  # interrupted: not saved
        assert engine.generate(JobRequest(make(steps=2), picture(), save=False)).images
    finally:
        engine.cancel_all()
        engine.unload()


def test_a_budget_spent_before_the_first_image_is_its_own_error(tmp_path):
    from webui.engine.core import Engine

    # The model load alone takes longer than this budget.
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", limits=Limits(job_timeout=0.001))
    try:
        job = engine.submit(JobRequest(make(steps=2), picture(), save=False))
        with pytest.raises(TimedOut, match="--job-timeout"):
            job.result(60)
    finally:
        engine.cancel_all()
        engine.unload()


def test_the_rest_api_refuses_a_body_over_the_upload_limit(engine, tmp_path):
    service = ApiService(engine, presets.PresetStore(tmp_path / "presets"))
    client = TestClient(create_app(service, max_body=4096), raise_server_exceptions=False)
    big = {"init_images": ["A" * 10_000], "steps": 1}
    answer = client.post("/sdapi/v1/img2img", json=big)
    assert answer.status_code == 413
    assert answer.json()["error"] == "PayloadTooLarge" and "--max-upload-mb" in \
        answer.json()["detail"]

    def chunks():  # no Content-Length: refused where the body passes the limit
        for _ in range(10):
            yield b"x" * 1000

    answer = client.post("/sdapi/v1/img2img", content=chunks(),
                         headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "at most 4,096" in answer.json()["detail"]
    assert client.get("/sdapi/v1/samplers").status_code == 200  # still serving
    small = json.dumps({"init_images": [], "steps": 1})
    assert client.post("/sdapi/v1/img2img", content=small,
                       headers={"content-type": "application/json"}).status_code == 422


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    launch.add_launch_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_limit_flags_reach_the_engine_and_the_upload_cap():
    limits = launch.check_limits(_args("--max-pixels", "1000000", "--max-steps", "60",
                                       "--max-batch", "8", "--max-queued-per-user", "1",
                                       "--job-timeout", "120"))
    assert limits == Limits(max_pixels=1_000_000, max_steps=60, max_batch=8,
                            max_queued_per_user=1, job_timeout=120)
    assert launch.check_limits(_args()) == Limits()
    assert launch.launch_options([], None, 2)["max_file_size"] == 2 * 2 ** 20


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--max-pixels", "-5"], "--max-pixels must be at least 1"),
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--job-timeout", "-1"], "--job-timeout must be 0 (no limit) or more"),
    (["--job-timeout", "nan"], "--job-timeout must be 0 (no limit) or more"),
    (["--max-queued-per-user", "-2"], "--max-queued-per-user must be 0 (no limit) or more"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be more than 0"),
])
def test_unusable_limit_flags_stop_the_launch(argv, message):
    with pytest.raises(launch.LaunchError, match=re.escape(message)):
        launch.check_limits(_args(*argv))


def test_the_command_line_has_only_the_settings_own_ranges():
    unlimited = Limits.unlimited()
    assert unlimited.max_steps == 150 and unlimited.max_batch == 800
    assert unlimited.max_pixels == 4096 * 4096
    assert unlimited.job_timeout == 0 and unlimited.max_queued_per_user == 0
    unlimited.check(make(steps=150, width=4096, height=4096, batch_count=100, batch_size=8))


# -- the disk that uploads take ------------------------------------------------------------------
def _upload_app(folder, clock, max_bytes):
    """A stand-in for Gradio's upload route (each POST body becomes a file in `folder`),
    behind UploadSpace."""
    import itertools

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from webui.ui.upload_space import UploadSpace

    names = itertools.count()

    async def upload(request):
        path = folder / f"upload-{next(names)}"
        path.write_bytes(await request.body())
        os.utime(path, (clock.now, clock.now))
        return JSONResponse([str(path)])

    app = Starlette(routes=[Route("/gradio_api/upload", upload, methods=["POST"])])
    return UploadSpace(app, max_bytes=max_bytes, folder=folder, keep_seconds=600, clock=clock)


class _Clock:
    now = 1_000_000.0

    def __call__(self):
        return self.now


def test_uploads_stay_within_their_disk_and_the_oldest_make_room(tmp_path):
    clock = _Clock()
    http = TestClient(_upload_app(tmp_path, clock, max_bytes=3000))
    for _ in range(3):
        assert http.post("/gradio_api/upload", content=b"x" * 1000).status_code == 200
    # Full, and every file is recent (a queued job may still need it): refused, nothing lost.
    refused = http.post("/gradio_api/upload", content=b"x" * 1000)
    assert refused.status_code == 507 and "space for uploads is full" in refused.json()["detail"]
    assert len(list(tmp_path.iterdir())) == 3
    # Later the oldest go first, as few as make room.
    clock.now += 601
    assert http.post("/gradio_api/upload", content=b"y" * 1500).status_code == 200
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["upload-2", "upload-3"], left
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3000


def test_the_upload_disk_flag_reaches_the_page():
    options = launch.launch_options([], None, 2, 5)
    [space] = [m for m in options["app_kwargs"]["middleware"] if m.cls.__name__ == "UploadSpace"]
    assert space.kwargs["max_bytes"] == 5 * 2 ** 20
    assert launch.check_limits(_args("--max-upload-cache-mb", "5"))
    with pytest.raises(launch.LaunchError, match="--max-upload-cache-mb must be more than 0"):
        launch.check_limits(_args("--max-upload-cache-mb", "0"))
