"""Start or join a Ray cluster, deploy the diffusion replicas, and give back a RayEngine.

`connect("local", replicas=2)` starts Ray on this machine (its GPUs are Ray's GPUs);
`connect("ray://head:10001")` or `connect("head:6379")` joins a running cluster (`ray start
--head` on one machine, `ray start --address=head:6379` on each GPU machine). Serve's HTTP proxy
is not started: the studio and the API are served by the front door's own process, which talks
to the replicas through deployment handles.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .board import NAMESPACE

APP_NAME = "img2img"
DEPLOYMENT_NAME = "diffusion"
# A replica being replaced or scaled down lets its running job finish for up to this long.
GRACEFUL_SHUTDOWN_S = 600.0


class ClusterError(RuntimeError):
    """The cluster could not be started, joined or deployed to; the message says what to do."""


@dataclass
class ClusterOptions:
    """address: 'local' or a Ray address; replicas: how many (fixed) unless min_replicas and
    max_replicas differ (autoscaling between them on queued jobs); gpus: GPUs per replica
    (None: 1 when the cluster has GPUs, else 0, for a CPU-only trial); cpus: CPUs per replica;
    object_store_mb: the local Ray's object store (local only)."""

    address: str = "local"
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    gpus: float | None = None
    cpus: float = 1.0
    object_store_mb: int = 256
    # Autoscaling: seconds of queued jobs before a replica is added, and of idleness before
    # one is taken away (a GPU worker is slow to start: add soon, remove late).
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 300.0

    def bounds(self) -> tuple[int, int]:
        lo = self.min_replicas if self.min_replicas is not None else self.replicas
        hi = self.max_replicas if self.max_replicas is not None else max(self.replicas, lo)
        if lo < 0 or hi < 1 or lo > hi:
            raise ClusterError(f"--min-replicas {lo} and --max-replicas {hi}: need "
                               "0 <= min <= max and max >= 1")
        return lo, hi


def _init_ray(address: str, object_store_mb: int) -> bool:
    """Connect to Ray (start it for 'local'); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # Sized for a workstation, not a data centre: no dashboard, no usage report, a small
    # object store (jobs move a few pictures, not datasets).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                  configure_logging=False)
    try:
        if address == "local":
            ray.init(object_store_memory=object_store_mb * 2 ** 20, **kwargs)
        else:
            kwargs.pop("include_dashboard")
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray's reasons vary; the message says which
        raise ClusterError(f"--cluster {address}: Ray could not be "
                           f"{'started' if address == 'local' else 'reached'} ({exc})") from None
    return True


def _diffusion(options: ClusterOptions, models_dir: Path, model: str, queue_size: int,
               device: str | None, compile: str, max_pixels: int | None, limits=None):
    """(the diffusion deployment bound to its arguments, the board actor, its name, the most
    replicas) on a connected Ray. Keep the board's handle: the board lives while one does."""
    import ray
    from ray import serve

    from .board import Board
    from .replica import DiffusionReplica

    lo, hi = options.bounds()
    gpus = options.gpus
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    board_name = f"img2img-board-{uuid.uuid4().hex[:8]}"
    board = ray.remote(Board).options(name=board_name, namespace=NAMESPACE,
                                      num_cpus=0).remote()
    scaling = ({"num_replicas": lo} if lo == hi else
               {"autoscaling_config": {"min_replicas": lo, "max_replicas": hi,
                                       "initial_replicas": max(lo, 1),
                                       "target_ongoing_requests": 1,
                                       "upscale_delay_s": options.upscale_delay_s,
                                       "downscale_delay_s": options.downscale_delay_s,
                                       # Jobs last seconds to minutes: judge the load on the
                                       # last few seconds, not Serve's half-minute default.
                                       "metrics_interval_s": 1.0,
                                       "look_back_period_s": 5.0}})
    deployment = serve.deployment(
        DiffusionReplica, name=DEPLOYMENT_NAME,
        ray_actor_options={"num_gpus": gpus, "num_cpus": options.cpus},
        max_ongoing_requests=1,
        # The engine's own bound (running places + queue_size) refuses first; Serve's bound
        # counts requests still being assigned too, so it gets the running places as margin.
        max_queued_requests=hi + max(queue_size, 1),
        health_check_period_s=10.0, health_check_timeout_s=60.0,
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S, graceful_shutdown_wait_loop_s=1.0,
        **scaling)
    bound = deployment.bind(str(models_dir), model, board_name, device, compile, max_pixels,
                            limits)
    return bound, board, board_name, hi


def _stopper(started: bool):
    def shutdown() -> None:
        import ray
        from ray import serve

        try:
            serve.delete(APP_NAME)
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
    return shutdown


def connect(options: ClusterOptions, models_dir, outputs_dir, model: str = "",
            queue_size: int = 16, device: str | None = None, compile: str = "auto",
            max_pixels: int | None = None, limits=None):
    """Deploy the replicas and return a RayEngine over them in this process (tests, the
    benchmark, code of your own; its `shutdown()` undeploys and, when this call started Ray,
    stops it). limits: the engine's Limits (default Limits())."""
    import ray
    from ray import serve

    from ..engine.core import Engine
    from .engine import RayEngine

    models_dir = Path(models_dir).expanduser().resolve()
    local = Engine(models_dir=models_dir, outputs_dir=outputs_dir, model=model,
                   queue_size=queue_size, compile="off", device="cpu", max_pixels=max_pixels,
                   limits=limits)
    started = _init_ray(options.address, options.object_store_mb)
    bound, board, _, hi = _diffusion(options, models_dir, local.model, queue_size, device,
                                     compile, max_pixels, local.limits)
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(bound, name=APP_NAME, route_prefix=None)
    except Exception as exc:  # noqa: BLE001
        if started:
            ray.shutdown()
        raise ClusterError(f"the diffusion replicas could not be deployed ({exc})") from None
    engine = RayEngine(handle, board, local, replicas=hi, queue_size=queue_size)
    stop = _stopper(started)

    def shutdown() -> None:
        engine.cancel_all()
        stop()

    engine.shutdown = shutdown
    return engine


@dataclass
class Served:
    """The studio served on the cluster; shutdown() undeploys it (and stops the Ray that
    serve_studio started)."""

    shutdown: object
    board: object = None  # held so that the board lives as long as the studio


def serve_studio(options: ClusterOptions, args, host: str, users, setup, outputs_dir) -> Served:
    """Deploy the diffusion replicas and the studio's ingress (ingress.py) as one Serve
    application, served by Serve's HTTP proxy on the head node at host:args.port."""
    from ray import serve

    from .ingress import StudioIngress

    models_dir = Path(args.models_dir).expanduser().resolve()
    args.models_dir = str(models_dir)
    started = _init_ray(options.address, options.object_store_mb)
    try:
        from ..engine.core import Engine

        model = Engine(models_dir=models_dir, outputs_dir=outputs_dir, model=args.model or "",
                       compile="off").model
        from ..ui.launch import check_limits

        bound, board, board_name, hi = _diffusion(options, models_dir, model,
                                                  args.queue_size, None,
                                                  getattr(args, "compile", "auto"), None,
                                                  check_limits(args))
        ingress = serve.deployment(
            StudioIngress, name="studio", num_replicas=1,
            # On the head node, where the outputs and presets folders are; no CPU reserved
            # (it waits on the replicas) and room for every open page's connections.
            ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
            max_ongoing_requests=1000, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
        app = ingress.bind(bound, board_name, hi, args, users, setup, str(outputs_dir))
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": args.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
    except KeyboardInterrupt:
        _stopper(started)()  # stopped while it started: nothing is left deployed
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's and the studio's reasons, said once
        _stopper(started)()
        raise ClusterError(f"the studio could not be deployed on the cluster ({exc})") from None
    return Served(_stopper(started), board)
