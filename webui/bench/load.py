"""`python -m webui.bench --load`: many artists at once on one studio, page and API together.

The studio (page and REST API on one port, each client its own login) is served on a loopback
port in this process; `clients` threads then send `requests` jobs each, one after another:
even clients through gradio_client as the page's own client does, odd ones through the REST
API as scripts do. Every job has its own prompt and seed. The answer to each is recorded once:
done, busy (the studio's clear refusal when its queue is full) or an error. Then:

- lost: requests without an answer (should be 0); errors: answers that are neither a result
  nor "busy" (0);
- mixups: results whose seed or prompt is not the request's (0) — a result, its infotext and
  the saved file must all be the job's own;
- saved: PNG files written, which must equal the images done (a job run twice would write two);
- presets: each artist has a preset of their own; each API client lists the styles it may use
  while the jobs run, and must see its own and nobody else's (preset_mixups);
- previews: every live preview a page client was sent is compared, after the run, with the
  preview of its own job run again alone (the same settings, read from its infotext, and the
  same picture): it must match that one and be nearer to it than to any other client's
  (preview_mixups; previews_checked counts the previews compared);
- latency p50/p95 over the done requests, and the process's resident memory: at the baseline
  (after one warm-up job), at its peak during the run, and after it.

Loopback only, bounded by clients x requests; on the CPU with tiny-random at 64x64.
"""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    client: int
    door: str  # "page" or "api"
    seed: int
    prompt: str
    state: str = "lost"  # done, busy, error, lost
    seconds: float = 0.0
    detail: str = ""
    mixup: bool = False
    busy_answers: int = 0  # "busy" answers before the last one (each was retried)
    infotext: str = ""  # the page's infotext of the result
    previews: list = field(default_factory=list)  # (step, RGB picture) as the page was sent them


@dataclass
class LoadReport:
    clients: int
    requests: int
    outcomes: list[Outcome] = field(default_factory=list)
    saved: int = 0
    preset_mixups: int = 0
    previews_checked: int = 0
    preview_mixups: int = 0
    wall_s: float = 0.0
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_after: int = 0

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    def summary(self) -> dict:
        times = sorted(o.seconds for o in self.outcomes if o.state == "done")

        def quantile(q: float) -> float | None:
            if not times:
                return None
            if len(times) == 1:
                return round(times[0], 3)
            return round(statistics.quantiles(times, n=100, method="inclusive")[
                int(q * 100) - 1], 3)

        mb = 2 ** 20
        return {"load": {
            "clients": self.clients, "requests": self.clients * self.requests,
            "answered": len([o for o in self.outcomes if o.state != "lost"]),
            "completed": self.count("done"), "refused_busy": self.count("busy"),
            "busy_answers_retried": sum(o.busy_answers for o in self.outcomes),
            "errors": self.count("error"), "lost": self.count("lost"),
            "mixups": sum(o.mixup for o in self.outcomes), "saved_files": self.saved,
            "preset_mixups": self.preset_mixups, "previews_checked": self.previews_checked,
            "preview_mixups": self.preview_mixups,
            "by_door": {door: {state: sum(o.door == door and o.state == state
                                          for o in self.outcomes)
                               for state in ("done", "busy", "error")}
                        for door in ("page", "api")},
            "p50_s": quantile(0.5), "p95_s": quantile(0.95), "wall_s": round(self.wall_s, 2),
            "rss_baseline_mb": round(self.rss_baseline / mb), "rss_peak_mb":
                round(self.rss_peak / mb), "rss_after_mb": round(self.rss_after / mb),
            "error_details": sorted({o.detail for o in self.outcomes if o.state == "error"})[:5],
        }}


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _trim() -> None:
    """Give the allocator's free pages back to the system (glibc keeps them otherwise), so
    that the resident size read next is the memory in use, at the baseline and after."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: the figures then include the allocator's free pages


def _serve(app) -> tuple[object, int, threading.Thread]:
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="load-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the studio did not start")
        time.sleep(0.05)
    return server, port, thread


BUSY = re.compile(r"busy|the most one user may have|queue is full", re.I)


def _page_job(client, init: str, outcome: Outcome, steps: int) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    job = client.submit(handle_file(init), prompt=outcome.prompt, seed=outcome.seed,
                        steps=steps, strength=0.5, pag_scale=0.0, api_name="/img2img")
    try:
        status, _, gallery, _, text, _ = job.result()
    except AppError as exc:
        outcome.state, outcome.detail = ("busy" if BUSY.search(str(exc)) else "error"), str(exc)
        return
    except Exception as exc:  # noqa: BLE001 - a broken answer is an error, never a lost request
        outcome.state, outcome.detail = "error", f"{type(exc).__name__}: {exc}"[:200]
        return
    outcome.state = "done" if str(status).startswith("**Done**") else "error"
    outcome.detail = str(status)[:200]
    # The status line and the infotext are this job's: its seed and its prompt.
    outcome.mixup = (f"seed {outcome.seed} " not in str(status)
                     or not str(text).startswith(outcome.prompt)
                     or f"Seed: {outcome.seed}," not in str(text) or len(gallery) != 1)
    outcome.infotext = str(text)
    # The live previews as they came (a sampling update carries its step in the status line
    # and, when one was ready, the preview as a file the client downloaded).
    for update in job.outputs():
        step = re.match(r"Step (\d+)/\d+", str(update[0]))
        if step and isinstance(update[1], str) and os.path.isfile(update[1]):
            with Image.open(update[1]) as picture:
                outcome.previews.append((int(step[1]), picture.convert("RGB")))


# How long a client waits for any one answer (an upload, a download, a reply), page and API
# alike. The clients run in the server's own process, so on a busy machine a small upload can
# take seconds to be read; the page client's library default (a few seconds) would count such
# a wait as a failed request, while the API client already waited this long.
CLIENT_TIMEOUT_S = 300


def page_client(url: str, auth: tuple[str, str]):
    """A page client (gradio_client, as a script on the page's API uses it) of the studio at
    `url`, logged in as `auth`, that waits CLIENT_TIMEOUT_S for each answer."""
    from gradio_client import Client

    return Client(url + "/", auth=auth, verbose=False,
                  httpx_kwargs={"timeout": CLIENT_TIMEOUT_S})


def client_picture(i: int):
    """Client i's init picture (64x64, colours of its own)."""
    from PIL import Image

    picture = Image.new("RGB", (64, 64), (150, 80, (40 + 9 * i) % 256))
    picture.paste((30, (60 + 13 * i) % 256, 200), (16, 16, 48, 48))
    return picture


def check_previews(engine, report: LoadReport) -> None:
    """Each page client's previews against its own job run again alone (see the module
    docstring). A preview is the client's when it is close to its own job's preview of that
    step (the page sends JPEGs: a few levels of difference) and nearer to it than to any other
    job's."""
    import numpy as np

    from .. import infotext
    from ..engine import JobRequest

    report.previews_checked = report.preview_mixups = 0
    reference: dict[int, dict[int, object]] = {}  # id(outcome) -> step -> pixels
    done = [o for o in report.outcomes if o.door == "page" and o.state == "done" and o.previews]
    for outcome in done:
        steps: dict[int, object] = {}

        def keep(progress, steps=steps) -> None:
            if progress.stage == "sampling" and progress.preview is not None:
                steps[progress.step] = np.asarray(progress.preview.convert("RGB"), np.float32)

        params = infotext.parse(outcome.infotext).params
        engine.generate(JobRequest(params, client_picture(outcome.client), save=False),
                        on_progress=keep)
        reference[id(outcome)] = steps
    for outcome in done:
        for step, picture in outcome.previews:
            own = reference[id(outcome)].get(step)
            if own is None:
                continue  # the solo run sent no preview at that step (they are time-thinned)
            pixels = np.asarray(picture, np.float32)

            def distance(other) -> float:
                if other.shape != pixels.shape:
                    return float("inf")
                return float(np.abs(other - pixels).mean())

            mine = distance(own)
            others = [distance(r[step]) for key, r in reference.items()
                      if key != id(outcome) and step in r]
            report.previews_checked += 1
            if mine > PREVIEW_TOLERANCE or any(d <= mine for d in others):
                report.preview_mixups += 1


# Mean difference (of 255) a preview may show from its solo run: the page sends JPEGs.
PREVIEW_TOLERANCE = 6.0


def _api_job(http, url: str, init_b64: str, outcome: Outcome, steps: int) -> None:
    response = http.post(f"{url}/sdapi/v1/img2img", json={
        "init_images": [init_b64], "prompt": outcome.prompt, "seed": outcome.seed,
        "steps": steps, "denoising_strength": 0.5, "width": 64, "height": 64,
        "save_images": True})
    if response.status_code == 503 and BUSY.search(response.text):
        outcome.state, outcome.detail = "busy", response.json().get("detail", "")
        return
    if response.status_code != 200:
        outcome.state, outcome.detail = "error", f"{response.status_code} {response.text[:200]}"
        return
    info = json.loads(response.json()["info"])
    outcome.state = "done"
    outcome.mixup = (info.get("seed") != outcome.seed or info.get("prompt") != outcome.prompt
                     or len(response.json()["images"]) != 1)


def run(clients: int = 20, requests: int = 3, steps: int = 2, queue_size: int = 8,
        retries: int = 40, retry_wait: float = 0.25, emit=None) -> LoadReport:
    """The load test (see the module docstring); its report (and one JSON line to `emit`).
    A "busy" answer is retried after `retry_wait` seconds up to `retries` times, as a client
    honouring the answer's advice does; a request still busy after that counts as refused."""
    import base64
    import io

    import httpx
    from PIL import Image

    from ..__main__ import build_parser
    from ..engine import Engine, JobRequest
    from ..params import make
    from ..ui import launch

    report = LoadReport(clients, requests)
    with tempfile.TemporaryDirectory(prefix="img2img-load-") as scratch:
        root = Path(scratch)
        users = [(f"artist{i}", f"pw-{i}") for i in range(clients)]
        args = build_parser().parse_args([
            "--api", "--queue-size", str(queue_size), "--models-dir", str(root / "models"),
            "--outputs-dir", str(root / "outputs"), "--user-presets", str(root / "presets")])
        engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                        model="tiny-random", queue_size=queue_size,
                        limits=launch.check_limits(args))
        setup = launch.ApiSetup(enabled=True, users=users)
        # The page and the API on one port, as the launcher serves them (each login is right,
        # so the login throttle, which counts failures only, never slows the clients).
        app = launch.front_door(engine, args, users, setup)
        from ..presets import PresetStore

        store = PresetStore(args.user_presets)
        for i, (user, _) in enumerate(users):
            store.for_user(user).save_params(f"look of artist {i}", make(steps=3 + i % 5))
        # Each artist their own picture (as on a shared link), so that a preview or a result
        # handed to the wrong client differs in its colours as well as in its seed.
        init_paths, init_b64 = [], []
        for i in range(clients):
            picture = client_picture(i)
            init_paths.append(root / f"init-{i}.png")
            picture.save(init_paths[-1])
            buffer = io.BytesIO()
            picture.save(buffer, "PNG")
            init_b64.append(base64.b64encode(buffer.getvalue()).decode())
        init = Image.open(init_paths[0])
        # Warm-up: the model loaded, one job run; then the baseline.
        engine.generate(JobRequest(make(steps=steps, strength=0.5, seed=0), init, save=False))
        server, port, thread = _serve(app)
        url = f"http://127.0.0.1:{port}"
        gc.collect()
        _trim()
        report.rss_baseline = report.rss_peak = _rss()
        stop = threading.Event()

        def watch_memory() -> None:
            while not stop.wait(0.1):
                report.rss_peak = max(report.rss_peak, _rss())

        threading.Thread(target=watch_memory, name="load-test-memory", daemon=True).start()
        report.outcomes = [Outcome(i, "page" if i % 2 == 0 else "api", 1000 * i + k + 1,
                                   f"client {i} request {k}")
                           for i in range(clients) for k in range(requests)]

        lock = threading.Lock()

        def patiently(job, outcome: Outcome) -> None:
            for attempt in range(retries + 1):
                t0 = time.perf_counter()
                job(outcome)
                outcome.seconds = time.perf_counter() - t0  # the answered attempt's latency
                if outcome.state != "busy" or attempt == retries:
                    return
                outcome.busy_answers += 1
                time.sleep(retry_wait)

        def client_thread(i: int) -> None:
            mine = [o for o in report.outcomes if o.client == i]
            if i % 2 == 0:
                page = page_client(url, users[i])
                for outcome in mine:
                    patiently(lambda o: _page_job(page, str(init_paths[i]), o, steps), outcome)
                page.close()
                return

            def api(o: Outcome) -> None:
                try:
                    _api_job(http, url, init_b64[i], o, steps)
                except Exception as exc:  # noqa: BLE001 - a broken answer is an error, not lost
                    o.state, o.detail = "error", f"{type(exc).__name__}: {exc}"[:200]

            def own_looks() -> set[str]:
                styles = http.get(f"{url}/sdapi/v1/prompt-styles")
                styles.raise_for_status()
                return {s["name"] for s in styles.json() if s["name"].startswith("look of")}

            with httpx.Client(auth=users[i], timeout=CLIENT_TIMEOUT_S) as http:
                for outcome in mine:
                    patiently(api, outcome)
                    try:
                        right = own_looks() == {f"look of artist {i}"}
                    except Exception:  # noqa: BLE001 - no listing is a mix-up of its own kind
                        right = False
                    if not right:
                        with lock:
                            report.preset_mixups += 1

        t0 = time.perf_counter()
        workers = [threading.Thread(target=client_thread, args=(i,), name=f"load-client-{i}")
                   for i in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(600)
        report.wall_s = time.perf_counter() - t0
        stop.set()
        server.should_exit = True
        thread.join(30)
        engine.cancel_all()
        check_previews(engine, report)
        report.saved = sum(1 for _ in (root / "outputs").rglob("*.png"))
        gc.collect()
        _trim()
        time.sleep(0.5)
        report.rss_after = _rss()
        engine.unload()
    if emit is not None:
        emit(report.summary())
    return report


if __name__ == "__main__":  # pragma: no cover - a direct run prints the report
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    print(json.dumps(run().summary()))
