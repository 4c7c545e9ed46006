"""`python -m webui --cluster local --replicas N` as an artist starts it: a Ray instance, the
diffusion replicas and the studio's ingress deployment (the page and the REST API through
Serve's HTTP proxy), and Ctrl+C stops them all. Refused options are refused before Ray starts.
Needs the cluster extra."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
requests = pytest.importorskip("requests")

from tests.serving import free_port, wait_for_ping  # noqa: E402

pytestmark = pytest.mark.cluster
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(tmp_path, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "webui", "--models-dir", str(tmp_path / "models"),
         "--outputs-dir", str(tmp_path / "outputs"), *extra], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("options, message", [
    (["--replicas", "0"], "--replicas must be at least 1"),
    (["--min-replicas", "3", "--max-replicas", "2"], "need 0 <= min <= max"),
    (["--replica-gpus", "-1"], "--replica-gpus must be 0 or more"),
    (["--preview-decoder", "tiny"], "--preview-decoder tiny is not available with --cluster"),
    (["--lora-rank", "8"], "--lora-rank is not available with --cluster"),
])
def test_bad_cluster_options_are_refused_before_ray_starts(tmp_path, options, message):
    process = launch(tmp_path, "--cluster", "local", "--port", str(free_port()), *options)
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and message in out, out
    assert "starting" not in out  # nothing was started


def test_the_studio_and_api_on_a_local_cluster_then_ctrl_c(tmp_path):
    port = free_port()
    process = launch(tmp_path, "--cluster", "local", "--replicas", "1", "--api", "--port",
                     str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(process, base)
        assert requests.get(base + "/", timeout=10).status_code == 200  # the page
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 60, 30)).save(buffer, format="PNG")
        body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "steps": 2,
                "seed": 3, "prompt": "a harbour", "save_images": True}
        answer = requests.post(f"{base}/sdapi/v1/img2img", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["images"]) == 1
        assert len(list((tmp_path / "outputs").rglob("*.png"))) == 1  # saved by this process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            pytest.fail(f"Ctrl+C did not stop the studio:\n{out}")
    assert "starting 1 diffusion replica(s) and the studio" in out
    assert process.returncode == 0 and "Traceback" not in out, out


def test_the_cluster_benchmark_measures_each_replica_count(tmp_path):
    """`python -m webui.bench --cluster local` as the README runs it, small: one JSON line per
    replica count with its throughput and scaling (the figures themselves are read, not
    judged, here)."""
    import json

    out = tmp_path / "bench.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "webui.bench", "--cluster", "local",
                           "--replicas", "2", "--steps", "10", "--burst", "1", "--size", "64x64",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    counts = [line for line in lines if "cluster" in line]
    assert [line["replicas"] for line in counts] == [1, 2]
    for line in counts:
        # One job per replica at once, each long enough to overlap: every replica took one.
        assert line["jobs"] == line["replicas"] and line["replicas_used"] == line["replicas"]
        assert line["images_per_min"] > 0 and line["seconds"] > 0
        assert abs(line["efficiency"] - line["scaling"] / line["replicas"]) < 0.002
    assert counts[0]["scaling"] == 1.0
