"""`python -m webui.bench --cluster local --replicas N`: throughput of the cluster engine.

For each replica count in 1, 2, 4 up to N, the replicas are deployed on a local Ray (or the
cluster at --cluster ADDRESS), each warmed with one job (its model loaded), and then a bounded
burst of `burst x count` jobs is submitted at once and timed to the last result. One JSON line
per count: images per minute, and `scaling` = its throughput / one replica's and
`efficiency` = scaling / count (the goal: at least 0.8 while count <= the cores or GPUs).
On the CPU each replica gets one thread (tiny-random, one CPU each).
"""

from __future__ import annotations

import os
import tempfile
import time

COUNTS = (1, 2, 4)


def counts_up_to(replicas: int) -> list[int]:
    return [n for n in COUNTS if n <= replicas] or [replicas]


def run(address: str, replicas: int, model: str, size: tuple[int, int], steps: int,
        burst: int, emit) -> None:
    import ray
    from PIL import Image

    from ..cluster.deploy import ClusterOptions, connect
    from ..engine import JobRequest
    from ..params import make

    counts = counts_up_to(replicas)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = False
    if not ray.is_initialized():
        if address == "local":
            # One logical CPU per replica at the largest count, so every count can be placed;
            # a count beyond the machine's cores shares them (and the figures show it).
            ray.init(num_cpus=max(max(counts), os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False, object_store_memory=256 * 2 ** 20,
                     namespace="img2img")
        else:
            ray.init(address=address, log_to_driver=False, namespace="img2img")
        started = True
    init = Image.radial_gradient("L").convert("RGB").resize(size)

    def job(seed: int) -> JobRequest:
        return JobRequest(make(model=model, steps=steps, strength=0.8, seed=seed,
                               pag_scale=0.0), init, save=False)

    base = None
    try:
        with tempfile.TemporaryDirectory(prefix="img2img-bench-cluster-") as scratch:
            for count in counts:
                engine = connect(ClusterOptions(address=address, replicas=count),
                                 os.path.join(scratch, "models"),
                                 os.path.join(scratch, "outputs"), model=model,
                                 queue_size=burst * count, compile="off")
                try:
                    warm = time.monotonic()
                    for handle in [engine.submit(job(k)) for k in range(count)]:
                        handle.result()
                    warmup = time.monotonic() - warm
                    jobs = burst * count
                    began = time.monotonic()
                    handles = [engine.submit(job(100 + k)) for k in range(jobs)]
                    workers = {handle.result().worker for handle in handles}
                    elapsed = time.monotonic() - began
                finally:
                    engine.shutdown()
                per_minute = jobs / elapsed * 60
                base = base or per_minute
                scaling = per_minute / base
                emit({"cluster": address, "replicas": count, "model": model,
                      "size": f"{size[0]}x{size[1]}", "steps": steps, "jobs": jobs,
                      "seconds": round(elapsed, 3), "images_per_min": round(per_minute, 1),
                      "scaling": round(scaling, 3), "efficiency": round(scaling / count, 3),
                      "replicas_used": len(workers), "warmup_s": round(warmup, 3),
                      "cores": os.cpu_count()})
    finally:
        if started:
            ray.shutdown()
