"""Faults while serving: the studio stopped mid-job by SIGTERM (a service manager's stop)
cancels the running job, writes nothing half, exits cleanly, and starts again on the same
folders. (Out of memory, a failing model load, an unwritable outputs folder: their tests sit
with the engine's, test_engine*.py and test_ui.py.)"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from PIL import Image

from tests.serving import free_port, wait_for_ping

ROOT = Path(__file__).resolve().parents[1]


def start(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "webui", "--port", str(port), "--api", "--models-dir",
         str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def body(steps: int, size: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 60, 30)).save(buffer, format="PNG")
    return {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "steps": steps,
            "denoising_strength": 1.0, "save_images": True}


def test_sigterm_mid_job_cancels_it_writes_nothing_and_restarts_cleanly(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(tmp_path, port)
    try:
        wait_for_ping(process, base, timeout=120)
        threading.Thread(target=lambda: _quietly(requests.post, f"{base}/sdapi/v1/img2img",
                                                 json=body(150, 192), timeout=120),
                         daemon=True).start()
        deadline = time.monotonic() + 60
        while requests.get(f"{base}/sdapi/v1/progress", timeout=5).json()["progress"] <= 0:
            assert time.monotonic() < deadline, "the job never started sampling"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "Traceback" not in out, out
    # The cancelled job saved nothing, and nothing half-written (no staged temporary) is left.
    outputs = tmp_path / "outputs"
    assert [p for p in outputs.rglob("*") if p.is_file()] == []
    again = start(tmp_path, port)
    try:
        wait_for_ping(again, base, timeout=120)
        answer = requests.post(f"{base}/sdapi/v1/img2img", json=body(2, 64), timeout=120)
        assert answer.status_code == 200, answer.text
        assert len([p for p in outputs.rglob("*.png")]) == 1
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)
    assert again.returncode == 0


def _quietly(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except requests.RequestException:
        pass  # the server went away mid-request: that is the test
