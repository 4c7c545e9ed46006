"""A cluster job that Serve's routing leaves unassigned while a replica is free is sent again
once, and fails clearly if stuck again, instead of waiting for ever (webui/cluster/engine.py,
RayJob._watch). Serve's side is stood in for by fakes: the stall cannot be caused on purpose
with a real cluster."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("ray.serve", reason="the cluster extra (Ray Serve) is not installed")

from ray.serve.exceptions import RequestCancelledError  # noqa: E402

from webui.cluster import engine as cluster_engine  # noqa: E402
from webui.engine import Cancelled, JobRequest, Result, WorkerLost  # noqa: E402
from webui.params import make  # noqa: E402


class Stuck:
    """A streaming response no replica ever picks up: it waits until cancelled."""

    def __init__(self):
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()

    def __iter__(self):
        if not self.cancelled.wait(30):
            raise AssertionError("the stuck request was never cancelled")
        raise RequestCancelledError("stuck")


class Served:
    """A response a replica runs at once."""

    def __init__(self, result):
        self.result = result

    def cancel(self):
        pass

    def __iter__(self):
        yield ("started", "replica r1 on node 1234, CPU")
        yield ("result", self.result)


class Remote:
    def __init__(self, fn):
        self.remote = fn


class FakeEngine:
    """What a RayJob uses of its RayEngine: the handle per model, the board, the free
    replicas' count, the end of a job."""

    model = "tiny-random"

    def __init__(self, responses, free=1):
        self.responses = list(responses)
        self.sent = 0
        self.free = free
        self.forgotten = []
        self.ended = []
        self.board = type("Board", (), {})()
        self.board.forget = Remote(self.forgotten.append)
        self.board.flag = Remote(lambda key, what: None)
        self._loaded = None

    def _streaming(self, model):
        def run(key, request):
            self.sent += 1
            return self.responses.pop(0)
        return type("Handle", (), {"run": Remote(run)})()

    def _free_replicas(self):
        return self.free

    def _ended(self, job):
        self.ended.append(job)

    def _write(self, result, owner):
        pass


def _result(request: JobRequest) -> Result:
    return Result(images=[], params=request.params, seed=1, width=64, height=64,
                  effective_steps=1, model="tiny-random", elapsed=0.1)


@pytest.fixture
def quick_stall(monkeypatch):
    monkeypatch.setattr(cluster_engine, "STALL_S", 1.5)


def _request() -> JobRequest:
    return JobRequest(make(steps=2, strength=0.5, seed=1), b"", save=False)


def test_a_job_left_unassigned_beside_a_free_replica_is_sent_again(quick_stall):
    request = _request()
    fake = FakeEngine([Stuck(), Served(_result(request))])
    job = cluster_engine.RayJob(fake, request, save=False)
    job._follow()
    assert fake.sent == 2
    assert job.result(timeout=5).model == "tiny-random"
    assert job.worker.startswith("replica r1") and fake.ended == [job]


def test_a_job_stuck_twice_fails_clearly(quick_stall):
    fake = FakeEngine([Stuck(), Stuck()])
    job = cluster_engine.RayJob(fake, _request(), save=False)
    job._follow()
    assert fake.sent == 2
    with pytest.raises(WorkerLost, match="although one was free"):
        job.result(timeout=5)
    assert fake.forgotten == [job.key]


def test_a_job_waiting_while_every_replica_is_busy_keeps_waiting(quick_stall):
    # Busy replicas are a queue, not a stall: nothing is sent again; the artist's own cancel
    # ends the wait as a cancel.
    stuck = Stuck()
    fake = FakeEngine([stuck], free=0)
    job = cluster_engine.RayJob(fake, _request(), save=False)
    follower = threading.Thread(target=job._follow)
    follower.start()
    follower.join(4)  # more than twice STALL_S
    assert follower.is_alive() and fake.sent == 1 and not stuck.cancelled.is_set()
    job.cancel()
    follower.join(10)
    assert not follower.is_alive()
    with pytest.raises(Cancelled):
        job.result(timeout=5)
