"""The cluster growing and being joined: autoscaling between --min-replicas and --max-replicas
on queued jobs, and `--cluster ADDRESS` joining a Ray cluster that is already running (and
leaving it running at Ctrl+C). A real local Ray cluster of two nodes with one logical GPU each,
as in test_cluster.py. Needs the cluster extra."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the cluster extra is not installed "
                          "(pip install '.[cluster]')")
requests = pytest.importorskip("requests")

from webui.engine import JobRequest  # noqa: E402
from webui.params import make  # noqa: E402

from tests.serving import free_port, wait_for_ping  # noqa: E402
from tests.test_cluster import NODE  # noqa: E402

pytestmark = pytest.mark.cluster
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def address():
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    local = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    local.add_node(**NODE)
    ray.init(address=local.address, namespace="img2img", log_to_driver=False)
    yield local.address
    ray.shutdown()
    local.shutdown()


def test_joining_a_running_cluster_serves_and_leaves_it_running(address, tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "webui", "--cluster", address, "--replicas", "2", "--nowebui",
         "--port", str(port), "--models-dir", str(tmp_path / "models"), "--outputs-dir",
         str(tmp_path / "outputs")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(process, base)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (20, 90, 200)).save(buffer, format="PNG")
        body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "steps": 2}
        answer = requests.post(f"{base}/sdapi/v1/img2img", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["images"]) == 1
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=90)
    # Stopped cleanly, also when Ctrl+C came while the second replica was still starting.
    assert process.returncode == 0 and "Traceback" not in out, out
    # It joined; it did not own the cluster: both nodes are still up.
    assert sum(node["Alive"] for node in ray.nodes()) == 2


# Last in the module: an autoscaled deployment's handle keeps a metrics task that outlives
# Serve and would reach for Ray again after the test.
def test_autoscaling_adds_a_replica_for_queued_jobs(address, tmp_path):
    """--min-replicas 1 --max-replicas 2: it starts at the minimum; jobs queue behind the one
    replica, a second one is started, and it takes jobs too."""
    from ray import serve

    from webui.cluster.deploy import APP_NAME, DEPLOYMENT_NAME, ClusterOptions, connect

    engine = connect(ClusterOptions(min_replicas=1, max_replicas=2, upscale_delay_s=1.0),
                     tmp_path / "models", tmp_path / "outputs", queue_size=6, device="cpu")
    try:
        status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
        assert status.replica_states == {"RUNNING": 1}
        init = Image.new("RGB", (192, 192), (200, 60, 30))
        jobs = [engine.submit(JobRequest(make(steps=150, strength=1.0, seed=k), init,
                                         save=False)) for k in range(6)]
        deadline = time.monotonic() + 120
        while len(engine.cluster_status()["replicas"]) < 2:
            assert time.monotonic() < deadline, "no replica was added for the queued jobs"
            time.sleep(0.5)
        for job in jobs:
            assert job.result(300).images
        assert len({job.worker for job in jobs}) == 2  # the added replica took jobs too
    finally:
        engine.shutdown()
