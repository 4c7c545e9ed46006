"""The studio's ingress deployment: one Serve replica that serves the Gradio page and the REST
API (the page mounted on a FastAPI app, so Gradio's queue starts with the app) through Serve's
HTTP proxy, and talks to the diffusion replicas only through a RayEngine (the engine
interface), so the page's and the API's code is the one the in-process studio runs.

It runs on the head node: outputs and user presets are written there, by this replica alone
(atomically, as the in-process studio writes them), and replicas need no shared disk.
"""

from __future__ import annotations

import ray
from ray import serve

from .board import NAMESPACE


@serve.ingress()
class StudioIngress:
    """diffusion: the diffusion deployment's handle (bound by deploy.serve_studio); board:
    the board actor's name; replicas: the most diffusion replicas; settings: the launcher's
    options (argparse values), users, API setup and outputs folder."""

    def __init__(self, diffusion, board: str, replicas: int, args, users, setup,
                 outputs_dir: str):
        from ..engine import Engine
        from ..ui import launch
        from .engine import RayEngine

        local = Engine(models_dir=args.models_dir, outputs_dir=outputs_dir,
                       model=args.model or "", queue_size=args.queue_size, compile="off",
                       device="cpu", limits=launch.check_limits(args),
                       allow_downloads=launch.downloads_allowed(args))
        self.engine = RayEngine(diffusion, ray.get_actor(board, namespace=NAMESPACE), local,
                                replicas=replicas, queue_size=args.queue_size)
        self._app = launch.front_door(self.engine, args, users, setup)

    def __serve_build_asgi_app__(self):
        return self._app

    def __del__(self):
        # Serve is stopping this replica: the jobs it follows are cancelled (each replica
        # stops within a step), so no job keeps a GPU after the studio has gone.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.cancel_all()
