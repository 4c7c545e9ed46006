"""Getting a first real model from the hub, and the licences shown in the model picker.

`download(repo_id)` fetches a diffusers-format model into the normal hub cache with
huggingface_hub's `snapshot_download`: only configs, tokenizer files and safetensors weights,
never pickles. `cached_models()` lists the hub-cache models the engine can load, so a finished
download shows up in the picker (as its hub id) on every later start too. `licence(source)` reads
a model's licence from its safetensors metadata or its model card; commercial use depends on it.

No gradio here: the page's panel (webui/ui/model_download.py) drives these functions.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, InputError, ModelError
from .models import CHECKPOINTS_SUBDIR, ModelSource, is_pickle


# Which weights a download fetches: the fp16 set where a repo has one (half the size); the
# engine loads a cached fp16-only copy with the fp16 variant (models.load).
FETCH_FP16 = True


@dataclass(frozen=True)
class Suggestion:
    """A well-known checkpoint offered for download: approximate download sizes of its fp16
    and of its plain safetensors weights; licence: the hub's licence id (its model card is the
    authority)."""

    repo_id: str
    family: str
    fp16_gb: float
    full_gb: float
    licence: str

    @property
    def size_gb(self) -> float:
        return self.fp16_gb if FETCH_FP16 else self.full_gb

    @property
    def label(self) -> str:
        return f"{self.repo_id} · {self.family} · ≈{self.size_gb:g} GB · {self.licence}"


# Diffusers-format repos with plain and fp16 safetensors weights, whose licences allow
# commercial use under the use restrictions in their text.
SUGGESTIONS = (
    Suggestion("stable-diffusion-v1-5/stable-diffusion-v1-5", "SD 1.x", 2.1, 4.3,
               "creativeml-openrail-m"),
    Suggestion("Lykon/dreamshaper-8", "SD 1.x", 2.1, 4.3, "creativeml-openrail-m"),
    Suggestion("stabilityai/stable-diffusion-xl-base-1.0", "SDXL", 6.9, 13.9, "openrail++"),
    Suggestion("segmind/SSD-1B", "SDXL", 4.4, 8.8, "apache-2.0"),
)

# The components whose weights the engine loads. The safety checker is not among them (the
# engine passes safety_checker=None), and at 1.2 GB it would be most of an SD 1.5 download.
_SKIPPED_FOLDERS = ("safety_checker",)
_CONFIG_SUFFIXES = (".json", ".txt", ".model")
# Seconds between progress reports: often enough for a live bar, rare enough to keep a page's
# event stream small.
PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True)
class DownloadProgress:
    """Bytes fetched so far and to fetch in all (files already cached excluded); bytes/second."""

    done: int
    total: int
    speed: float


def offline_message() -> str:
    return (f"There is no network access here, so models cannot be downloaded. Download a "
            f"checkpoint elsewhere and put the .safetensors file (or a diffusers folder) in "
            f"models/{CHECKPOINTS_SUBDIR}/, then press 🔄 beside the model list.")


def is_offline() -> bool:
    """True when downloads are switched off (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    # Both: huggingface_hub reads HF_HUB_OFFLINE once at import, the engine reads it per load.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def check_repo_id(repo_id: str) -> str:
    """The id stripped, or InputError with the hub validator's own reason."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise InputError("repo_id", "type a hub id (owner/name) or pick one from the list")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InputError("repo_id", f"{repo_id!r} is not a valid hub id: {exc}") from None
    # The hub still accepts a few legacy ids without an owner; the engine resolves owner/name only.
    if "/" not in repo_id:
        raise InputError("repo_id", f"{repo_id!r} is not a valid hub id: use owner/name")
    return repo_id


def _variant(name: str) -> str | None:
    """'fp16' for 'diffusion_pytorch_model.fp16.safetensors' (also for a shard of it and for its
    index file), None for the plain weights."""
    parts = name.split(".")
    if name.endswith(".index.json"):
        parts = [p for p in parts if p not in ("safetensors", "index", "json")]
        return parts[1] if len(parts) > 1 else None
    return parts[1] if len(parts) == 3 else None


def plan_files(files: list[str], fp16: bool = True) -> list[str]:
    """The files of a diffusers-format repo to fetch: the configs at its root (model_index.json
    among them), every folder's configs and tokenizer files, and one set of safetensors weights
    per folder (the fp16 variant when asked for and the folder has one, else the plain weights).

    Every folder, as diffusers' own loading of a hub id takes the weights of every folder (a
    spare VAE too): fetching fewer would leave the model incomplete for the engine, which then
    fetches the rest itself, or fails offline. The safety checker is the one exception, since
    the engine passes it as None and diffusers then skips it.

    ModelError when the repo is not in diffusers format or its weights are only pickles.
    """
    if "model_index.json" not in files:
        single = [f for f in files if "/" not in f and f.endswith(".safetensors")]
        hint = (f" It holds single-file checkpoints ({', '.join(single[:3])}): download one and "
                f"put it in models/{CHECKPOINTS_SUBDIR}/." if single else "")
        raise ModelError(f"this repo is not a diffusers-format model (no model_index.json).{hint}")
    chosen = [f for f in files if "/" not in f and f.endswith(_CONFIG_SUFFIXES)]
    weights_found = pickles_found = False
    by_folder: dict[str, list[str]] = {}
    for name in files:
        folder, _, base = name.partition("/")
        # The component folders' own files, nothing nested deeper; no weights from the repo
        # root, where many repos keep single-file versions of the same model.
        if base and "/" not in base and folder not in _SKIPPED_FOLDERS:
            by_folder.setdefault(folder, []).append(base)
    for folder, names in sorted(by_folder.items()):
        weights = [n for n in names if n.endswith(".safetensors")
                   or (n.endswith(".index.json") and ".safetensors." in n)]
        pickles_found |= any(is_pickle(n) for n in names)
        weights_found |= bool(weights)
        chosen += [f"{folder}/{n}" for n in names
                   if n.endswith(_CONFIG_SUFFIXES) and n not in weights]
        variants = [n for n in weights if _variant(n) == "fp16"]
        plain = [n for n in weights if _variant(n) is None]
        chosen += [f"{folder}/{n}" for n in (variants if fp16 and variants else plain or variants)]
    if not weights_found:
        what = ("only pickle weights (.bin/.ckpt/.pt), which can run code when opened, so they "
                "are not loaded" if pickles_found else "no safetensors weights")
        raise ModelError(f"this repo has {what}; pick a model published with .safetensors "
                         "weights")
    if "README.md" in files:
        chosen.append("README.md")  # the model card: the licence, readable offline later
    return chosen


def _hub_error(repo_id: str, exc: BaseException) -> ModelError:
    """A ModelError an artist can act on, for whatever the hub client raised."""
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, GatedRepoError):
        return ModelError(f"'{repo_id}' is gated: accept its licence on the model's hub page, "
                          "then log in here with `hf auth login`")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        return ModelError(f"no model '{repo_id}' on the hub (check the id)")
    if isinstance(exc, (OfflineModeIsEnabled, httpx2.ConnectError, httpx2.TimeoutException,
                        LocalEntryNotFoundError)):
        return ModelError(offline_message())
    if isinstance(exc, HfHubHTTPError):
        return ModelError(f"the hub refused the download of '{repo_id}': {exc}")
    return ModelError(f"the download of '{repo_id}' failed: {exc}")


class _Meter:
    """Adds up bytes from every file's download thread and reports (done, total, speed) to the
    caller, at most every PROGRESS_INTERVAL seconds and once at the end."""

    def __init__(self, total: int, on_progress: Callable[[DownloadProgress], None] | None,
                 cancel: threading.Event | None):
        self.total, self.done = total, 0
        self._on_progress, self._cancel = on_progress, cancel
        self._lock = threading.Lock()
        self._last = 0.0
        self._window: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def add(self, n: float) -> None:
        if self._cancel is not None and self._cancel.is_set():
            # Raised inside the file download's loop: it stops every thread within one chunk.
            raise Cancelled("download cancelled")
        with self._lock:
            self.done += int(n)
            now = time.monotonic()
            if now - self._last < PROGRESS_INTERVAL:
                return
            self._last = now
        self.report()

    def report(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._window.append((now, self.done))
            # The speed over the last few seconds: steady, yet it follows a change of pace.
            while len(self._window) > 2 and now - self._window[0][0] > 5:
                self._window.popleft()
            (t0, b0), (t1, b1) = self._window[0], self._window[-1]
            progress = DownloadProgress(min(self.done, self.total), self.total,
                                        (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0)
        if self._on_progress is not None:
            self._on_progress(progress)


def _tqdm_class(meter: _Meter):
    """A tqdm class for snapshot_download: its normal bars go to the terminal (stderr), and
    the bytes-written bar also feeds `meter`."""
    from huggingface_hub.utils import tqdm

    class MeteredTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            # snapshot_download makes three bars with this class (files, bytes received, bytes
            # written); every file's bytes go to the written one, named so. With plain HTTP both
            # byte bars count the same bytes: counting one of them counts each byte once.
            self._metered = kwargs.get("name") == "huggingface_hub.snapshot_download"
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self._metered and n:
                meter.add(n)
            return super().update(n)

    return MeteredTqdm


def download(repo_id: str, on_progress: Callable[[DownloadProgress], None] | None = None,
             cancel: threading.Event | None = None, fp16: bool | None = None) -> str:
    """Fetch a diffusers-format model into the hub cache; the snapshot folder's path.

    Files already cached are not fetched again, so a download that was cancelled or failed picks
    up from the files it had finished; a connection dropped mid-file is resumed from where it
    broke off by huggingface_hub itself (a Range request). Raises InputError for a malformed
    id, Cancelled when `cancel` is set, and ModelError (not on the hub, offline, pickle-only, not
    diffusers format) with a message for the artist otherwise.
    """
    fp16 = FETCH_FP16 if fp16 is None else fp16
    from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache

    repo_id = check_repo_id(repo_id)
    if is_offline():
        raise ModelError(offline_message())
    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - each kind becomes its own message
        raise _hub_error(repo_id, exc) from None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    try:
        files = plan_files(list(sizes), fp16=fp16)
    except ModelError as exc:
        raise ModelError(f"'{repo_id}': {exc}") from None
    # Only what is missing counts towards the total, so the bar starts at zero and ends full.
    missing = [f for f in files
               if not isinstance(try_to_load_from_cache(repo_id, f, revision=info.sha), str)]
    meter = _Meter(sum(sizes[f] for f in missing), on_progress, cancel)
    try:
        # The branch, not info.sha: only then is refs/main written, which the picker and an
        # offline load of the hub id look the snapshot up by.
        folder = snapshot_download(repo_id, allow_patterns=files, tqdm_class=_tqdm_class(meter))
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(repo_id, exc) from None
    meter.done = meter.total
    meter.report()
    print(f"Downloaded {repo_id} to {folder}", file=sys.stderr)
    return folder


# -- models in the hub cache ---------------------------------------------------------------
# The weighted components: a snapshot with their configs but no weights (what loading a single
# file leaves in the cache) is not a model the engine can load.
_WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2", "transformer")


def _loadable_snapshot(model_index: Path) -> bool:
    try:
        components = json.loads(model_index.read_text())
    except (OSError, ValueError):
        return False
    folder = model_index.parent
    needed = [name for name in _WEIGHTED if isinstance(components.get(name), list)
              and components[name][0] is not None]
    return bool(needed) and all(any((folder / name).glob("*.safetensors")) for name in needed)


def is_cached(repo_id: str) -> bool:
    """True when the hub cache holds a snapshot of `repo_id` (any files of it): a job may use
    it without downloading."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshots = folder / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def cached_models() -> list[str]:
    """Hub ids of the diffusers models in the hub cache whose weights are all there (sorted)."""
    from huggingface_hub import constants, try_to_load_from_cache

    root = Path(constants.HF_HUB_CACHE)
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.glob("models--*--*")):
        # The cache's folder name is "models--owner--name"; a hub id cannot contain "--".
        repo_id = entry.name[len("models--"):].replace("--", "/", 1)
        index = try_to_load_from_cache(repo_id, "model_index.json")
        if isinstance(index, str) and _loadable_snapshot(Path(index)):
            found.append(repo_id)
    return found


# -- licences ------------------------------------------------------------------------------
_licences: dict[tuple[str, float, int], str] = {}
_licences_lock = threading.Lock()


def _read_licence(path: Path) -> str:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            # numpy, not pt: reading the header must not import torch (the page never does).
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError):
            return ""
        return str(metadata.get("modelspec.license", "")).strip()
    from huggingface_hub import metadata_load

    try:
        card = metadata_load(path) or {}
    except (OSError, ValueError):
        return ""
    licence = card.get("license", "")
    licence = ", ".join(map(str, licence)) if isinstance(licence, list) else str(licence or "")
    # "other" says only that the licence has its own name (and text) on the model's page.
    if licence == "other" and card.get("license_name"):
        licence = str(card["license_name"])
    return licence.strip()


def _file_licence(path: Path) -> str:
    """The licence a file states, read once per (path, mtime, size): listing stays cheap."""
    try:
        stat = path.stat()
    except OSError:
        return ""
    key = (str(path), stat.st_mtime, stat.st_size)
    with _licences_lock:
        if key in _licences:
            return _licences[key]
    licence = _read_licence(path)
    with _licences_lock:
        _licences[key] = licence
    return licence


def licence(source: ModelSource) -> str:
    """The licence a model states ('' when it states none): a single file's `modelspec.license`
    metadata; the `license` of the model card (README.md) of a diffusers folder or of a hub
    model in the cache. Nothing is fetched."""
    if source.kind == "file":
        return _file_licence(Path(source.location))
    if source.kind == "folder":
        return _file_licence(Path(source.location) / "README.md")
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        card = try_to_load_from_cache(source.location, "README.md")
        return _file_licence(Path(card)) if isinstance(card, str) else ""
    return ""
