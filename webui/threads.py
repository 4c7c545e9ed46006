"""Running work in a thread that ends with it, so the OpenMP team that its CPU kernels start
ends too.

Seen on a 2-core machine with torch's CPU kernels: once two long-lived threads had each run
work that starts an OpenMP team, and one of them compiled (inductor) kernels, every later job
ran 2 to 2.5 times slower, eager or compiled (with more OpenMP threads than cores the runtime
stops them spinning between its parallel regions, so each small kernel waits for its threads
to wake). The same work run in a thread that had ended slowed nothing. The compiled path's
background compiles (engine/compiled.py) and the benchmark's plain-diffusers side run so.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


def run_in_passing_thread(work: Callable[..., Any], *args, **kwargs) -> Any:
    """work(*args, **kwargs) in a new thread, waited for: its result, or its exception raised
    here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="passing", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
