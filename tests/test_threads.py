"""run_in_passing_thread: the work runs in a thread of its own that has ended when it returns
(so the OpenMP team its CPU kernels start ends too), with its result or its exception."""

from __future__ import annotations

import threading

import pytest

from webui.threads import run_in_passing_thread


def test_the_work_runs_in_a_thread_that_has_ended_and_gives_its_result():
    ran_in = []

    def work(a, b, scale=1):
        ran_in.append(threading.current_thread())
        return (a + b) * scale

    assert run_in_passing_thread(work, 2, 3, scale=4) == 20
    assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()


def test_its_exception_is_raised_in_the_caller():
    def work():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        run_in_passing_thread(work)
