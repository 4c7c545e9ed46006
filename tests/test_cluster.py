"""The studio's engine on Ray Serve replicas (webui/cluster), on a real local Ray cluster: a head
and a second node on this machine (Ray's own cluster utilities), each with one logical GPU, so
placement is exercised though the replicas run tiny-random on the CPU.

Shown: two replicas on two "GPUs" on two nodes; two jobs at the same time on different
replicas; model affinity; progress and previews arrive; Interrupt stops a remote job within a
few steps; killing a replica's process mid-job fails that job clearly, nothing is written for
it, and the next job succeeds; a full queue answers busy; the engine suite's interface tests
(tests/test_engine.py and tests/test_engine_interface.py, through their `api` and `fresh_api`
fixtures) pass against RayEngine as against the in-process engine; files are written by the
front door; the REST API and the studio's handlers on the cluster give the in-process
engine's pictures.

Needs the cluster extra (pip install ".[cluster]"); the README's test command installs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time

import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the cluster extra is not installed "
                          "(pip install '.[cluster]')")

from webui.engine import (Cancelled, EngineAPI, JobRequest, QueueFull,  # noqa: E402
                          WorkerLost)
from webui.params import make  # noqa: E402

# The engine-interface tests, run here against RayEngine through this module's `api` fixture
# (the ones that reach only the interface; the others use the in-process engine's internals).
from tests.test_engine_interface import (  # noqa: E402
    test_a_refused_request_leaves_no_file, test_a_request_is_plain_data_and_runs_after_a_round_trip,
    test_latents_travel_as_bytes, test_listings_and_queue_status,
    test_names_outside_the_models_folder_are_refused,
    test_the_in_process_engine_implements_the_protocol)

import inspect  # noqa: E402

from tests import test_engine as engine_tests  # noqa: E402

# The engine suite's tests written against the interface alone (their `api` and `fresh_api`
# fixtures), collected here too so that they run against RayEngine.
ENGINE_SUITE = {name: test for name, test in vars(engine_tests).items()
                if name.startswith("test_") and callable(test)
                and {"api", "fresh_api"} & set(inspect.signature(test).parameters)}
globals().update(ENGINE_SUITE)

REUSED = (test_a_refused_request_leaves_no_file,
          test_a_request_is_plain_data_and_runs_after_a_round_trip, test_latents_travel_as_bytes,
          test_listings_and_queue_status, test_names_outside_the_models_folder_are_refused,
          test_the_in_process_engine_implements_the_protocol)

pytestmark = pytest.mark.cluster

REPLICAS = 2
QUEUE = 1
# Ray on a 2-core machine: a small object store each, no dashboard, one CPU per node.
# A job long enough to act on while it runs (a few seconds on the CPU).
LONG = {"steps": 150, "size": 192}
NODE = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 80 * 2 ** 20}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    from webui.cluster.deploy import ClusterOptions, connect

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    local = Cluster(initialize_head=True,
                    head_node_args={**NODE, "include_dashboard": False})
    local.add_node(**NODE)
    ray.init(address=local.address, namespace="img2img", log_to_driver=False)
    root = tmp_path_factory.mktemp("cluster")
    engine = connect(ClusterOptions(replicas=REPLICAS), root / "models", root / "outputs",
                     queue_size=QUEUE, device="cpu")
    yield engine
    engine.shutdown()
    ray.shutdown()
    local.shutdown()


@pytest.fixture
def api(cluster, tmp_path) -> EngineAPI:
    """The cluster's engine with outputs in this test's tmp_path, idle before and after."""
    settle(cluster)
    cluster.outputs_dir = tmp_path / "outputs"
    yield cluster
    settle(cluster)


@pytest.fixture
def fresh_api(cluster, tmp_path) -> EngineAPI:
    """As `api`, for an engine that has loaded no model yet: a second RayEngine over the same
    replicas (which may hold models from earlier tests; what it loads is what it reports)."""
    from webui.cluster.engine import RayEngine
    from webui.engine.core import Engine

    settle(cluster)
    local = Engine(models_dir=cluster.models_dir, outputs_dir=tmp_path / "outputs",
                   compile="off", device="cpu")
    engine = RayEngine(cluster.handle, cluster.board, local, replicas=cluster.replicas,
                       queue_size=cluster.queue_size)
    yield engine
    settle(engine)


def settle(engine, timeout: float = 60) -> None:
    engine.cancel_all()
    deadline = time.monotonic() + timeout
    while engine.queue_status().running is not None or engine.queue_status().waiting:
        assert time.monotonic() < deadline, "the cluster did not become idle"
        time.sleep(0.1)
    wait_for_replicas(engine, REPLICAS, timeout)


def wait_for_replicas(engine, count: int, timeout: float = 90) -> list[dict]:
    """The replicas' status once `count` live ones are posting and none is busy."""
    deadline = time.monotonic() + timeout
    while True:
        replicas = engine.cluster_status()["replicas"]
        if len(replicas) == count and not any(r["busy"] for r in replicas):
            return replicas
        assert time.monotonic() < deadline, f"replicas: {replicas}"
        time.sleep(0.2)


def request(steps=2, size=64, seed=1, **settings) -> JobRequest:
    return JobRequest(make(steps=steps, seed=seed, **settings),
                      Image.new("RGB", (size, size), (200, 60, 30)))


def replica_of(job) -> str:
    """The replica id in a job's worker text ('replica ID on node ..., GPU n')."""
    return job.worker.split()[1]


def wait_sampling(job, step: int = 2, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        progress = job.last_progress
        if progress is not None and progress.stage == "sampling" and progress.step >= step:
            return progress
        assert not job.done and time.monotonic() < deadline, "the job never got sampling"
        time.sleep(0.02)


def test_two_replicas_on_two_gpus_on_two_nodes(api):
    replicas = wait_for_replicas(api, REPLICAS)
    assert len({r["node"] for r in replicas}) == REPLICAS
    assert all(r["gpu"] != "" for r in replicas)  # each was given a GPU
    result = api.generate(request())
    assert result.worker.startswith("replica ") and ", GPU " in result.worker


def test_two_jobs_run_at_the_same_time_on_different_replicas(api):
    spans: dict[int, list[float]] = {}

    def follow(job):
        for progress in job.updates():
            if progress.stage == "sampling":
                spans.setdefault(job.id, [time.monotonic()])
        spans[job.id].append(time.monotonic())

    jobs = [api.submit(request(steps=60, size=128, seed=k)) for k in range(2)]
    threads = [threading.Thread(target=follow, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    results = [job.result() for job in jobs]
    assert replica_of(jobs[0]) != replica_of(jobs[1])
    (a0, a1), (b0, b1) = (spans[job.id][::len(spans[job.id]) - 1] for job in jobs)
    assert a0 < b1 and b0 < a1  # their sampling overlapped
    assert all(len(r.images) == 1 and r.images[0].path.is_file() for r in results)


def test_a_job_goes_to_the_replica_that_has_its_model(api):
    first = api.submit(request(model="tiny-random-xl"))
    first.result()
    holder = replica_of(first)
    status = {r["replica"]: r for r in wait_for_replicas(api, REPLICAS)}
    assert status[holder]["model"] == "tiny-random-xl"
    for seed in range(3):
        # One at a time, each finding both replicas free: the one with the model gets it.
        job = api.submit(request(model="tiny-random-xl", seed=seed))
        job.result()
        assert replica_of(job) == holder
        wait_for_replicas(api, REPLICAS)


def test_progress_and_previews_arrive(api):
    job = api.submit(request(steps=40, size=128))
    stages, previews, steps = set(), 0, []
    for progress in job.updates():
        stages.add(progress.stage)
        previews += progress.preview is not None
        if progress.stage == "sampling":
            steps.append(progress.step)
    result = job.result()
    assert {"sampling", "saving"} <= stages
    assert previews >= 1 and steps == sorted(steps) and steps[-1] == steps[-1] > 1
    assert job.last_preview is not None and result.images[0].path.is_file()


def test_interrupt_stops_a_remote_job_within_a_few_steps(api):
    job = api.submit(request(**LONG))
    at = wait_sampling(job, 3).step
    job.cancel()
    try:
        result = job.result(60)
    except Cancelled:
        result = None
    last = job.last_progress.step
    # The replica reads the board a few times a second and the engine stops within a step:
    # a few steps ran after the click, not the job's remaining 140-odd.
    print("INTERRUPT", at, last)
    assert last - at < 40, (at, last)
    if result is not None:
        assert result.interrupted
    assert api.generate(request()).images  # the replica serves the next job


def test_skip_ends_the_batch_and_keeps_its_picture(api):
    job = api.submit(request(**{**LONG, "size": 64}, batch_count=2))
    wait_sampling(job, 3)
    job.skip()
    deadline = time.monotonic() + 60
    while job.last_progress.batch_index == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.cancel()
    result = job.result(60)
    assert len(result.images) >= 1


def test_a_full_queue_answers_busy(api):
    jobs = [api.submit(request(**LONG, seed=k)) for k in range(REPLICAS + QUEUE)]
    with pytest.raises(QueueFull, match="busy"):
        api.submit(request())
    status = api.queue_status()
    assert status.waiting + (status.running is not None) >= 1
    for job in jobs:
        job.cancel()


def test_a_refused_name_never_reaches_a_replica(api):
    from webui.engine import InputError

    with pytest.raises(InputError) as caught:
        api.submit(request(model="../../etc/passwd"))
    assert caught.value.field == "model"
    assert api.queue_status().waiting == 0


def test_a_replica_killed_mid_job_fails_that_job_and_the_next_succeeds(api, tmp_path):
    job = api.submit(request(**LONG))
    wait_sampling(job, 3)
    victim = replica_of(job)
    pid = next(r["pid"] for r in api.cluster_status()["replicas"] if r["replica"] == victim)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLost, match="GPU worker stopped"):
        job.result(120)
    assert not list((tmp_path / "outputs").rglob("*.png"))  # nothing written for it
    nxt = api.generate(request(seed=9))
    assert nxt.images[0].path.is_file() and replica_of_result(nxt) != victim
    # Serve replaces the dead replica; the cluster is back to full strength.
    replicas = wait_for_replicas(api, REPLICAS, timeout=120)
    assert victim not in {r["replica"] for r in replicas}


def replica_of_result(result) -> str:
    return result.worker.split()[1]


# -- the front doors on the cluster: same page, same API, same pictures --------------------------
def test_the_rest_api_on_the_cluster_gives_the_in_process_engines_picture(api, engine, tmp_path):
    from fastapi.testclient import TestClient

    from tests.test_api import info_of, picture, scripting_img2img
    from webui import presets
    from webui.api.app import create_app
    from webui.api.service import ApiService

    init = Image.new("RGB", (64, 96), (200, 60, 30))
    body = scripting_img2img(init, steps=3, seed=11)
    answers = []
    for each in (api, engine):
        client = TestClient(create_app(ApiService(each, presets.PresetStore(tmp_path / "p"))),
                            raise_server_exceptions=False)
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        answers.append(response)
    remote, here = (picture(a.json()["images"][0]) for a in answers)
    assert remote.size == (64, 96) and remote.tobytes() == here.tobytes()
    assert info_of(answers[0])["infotexts"] == info_of(answers[1])["infotexts"]


def test_the_studio_on_the_cluster_generates_and_shows_the_cluster_tab(api):
    from webui.ui import cluster_panel
    from webui.ui.handlers import Session, Studio

    studio = Studio(api)
    views = list(studio.generate(Session(), Image.new("RGB", (96, 64), (20, 90, 200)),
                                 steps=3, strength=0.5, seed=4))
    assert "Done" in views[-1].status
    saved = list(api.outputs_dir.rglob("*.png"))
    assert len(saved) == 1  # written here, by the front door
    table = cluster_panel.table(api)
    assert table.startswith(f"**{REPLICAS} replicas**") and table.count("| idle |") == REPLICAS


def test_a_replica_whose_model_fails_to_load_reports_it_and_keeps_serving(api):
    from webui.engine import ModelError

    broken = api.models_dir / "Stable-diffusion" / "broken.safetensors"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a checkpoint")
    try:
        with pytest.raises(ModelError):
            api.generate(request(model="broken.safetensors"))
        assert api.generate(request()).images
    finally:
        broken.unlink()


def test_load_model_loads_on_a_replica_and_says_why_not(api):
    from webui.engine import InputError, ModelError

    assert api.load_model("tiny-random-xl") == api.loaded_model() == "tiny-random-xl"

    async def inside_an_event_loop():  # as a caller in async code (or a browser driver's)
        return api.load_model("tiny-random")

    # In a thread of its own, so that the loop is this test's even when the session already
    # runs one in the main thread (the browser tests' driver does).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, inside_an_event_loop()).result() == "tiny-random"
    with pytest.raises(InputError) as caught:
        api.load_model("/etc/passwd")
    assert caught.value.field == "model"
    broken = api.models_dir / "Stable-diffusion" / "broken.safetensors"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a checkpoint")
    try:
        with pytest.raises(ModelError) as failed:
            api.load_model("broken.safetensors")
        assert "Traceback" not in str(failed.value)  # the engine's message, not Ray's
    finally:
        broken.unlink()
    assert api.generate(request()).images
