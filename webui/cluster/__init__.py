"""Serving from many GPUs: the studio's engine interface on Ray Serve replicas.

Optional (`pip install "img2img-webui[cluster]"`); nothing here is imported by the rest of the
package unless `--cluster` asks for it.

- `board.py`: one small Ray actor that job controls (interrupt, skip) and replica status go
  through, because a replica serves one request at a time and could not take a second call
  that asks it to stop the first.
- `replica.py`: the diffusion replica: one GPU, one in-process Engine, one job at a time; the
  checkpoint is Serve's multiplexed model id, so jobs go where their model is loaded.
- `engine.py`: `RayEngine`, the engine interface (webui.engine.EngineAPI) over the replicas;
  the studio, the REST API and the CLI use it as they use the in-process Engine. Files are
  written here, by the front door, so replicas need no shared disk.
- `deploy.py`: start or join a Ray cluster, deploy the replicas, return a RayEngine.
"""
