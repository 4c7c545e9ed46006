"""Where models come from: the built-in tiny ones, a models folder, single files, hub ids.

`ModelRegistry.resolve(name)` turns whatever the artist typed or picked into a ModelSource;
`load(source, dtype, device)` turns a source into a ready img2img pipeline. Only safetensors
weights are ever loaded: pickle checkpoints can run arbitrary code when opened.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import tiny
from ..errors import InputError, ModelError
from .adapter_inputs import parse_prompt_loras

# torch and diffusers load inside the functions: the engine's public face imports this module.

CHECKPOINTS_SUBDIR = "Stable-diffusion"
LORA_SUBDIR = "Lora"
IP_ADAPTER_SUBDIR = "IP-Adapter"
CONTROLNET_SUBDIR = "ControlNet"
# Tiny VAEs for step previews (previews.py); under it, the folder for each family's latents
# (the published tiny VAEs' names; SD 2.x shares SD 1.x's latent space).
TINY_VAE_SUBDIR = "VAE-approx"
TINY_VAE_NAMES = {"sd1": "taesd", "sd2": "taesd", "sdxl": "taesdxl"}
# How step previews are made: the colour matrix, or a tiny VAE from TINY_VAE_SUBDIR.
PREVIEW_DECODERS = ("approx", "tiny")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# The model families, as the engine names them everywhere (messages, adapters, previews).
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def is_hub_id(name: str) -> bool:
    """True for an `owner/name` repo id as the hub's own validator accepts it (one rule for the
    whole project: model, IP-Adapter and ControlNet ids, and the download panel)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "/")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


@dataclass(frozen=True)
class ModelSource:
    """A model the engine can load. kind: 'tiny', 'folder', 'file' or 'hub'."""

    kind: str
    location: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.location


def is_pickle(path: str | os.PathLike) -> bool:
    """True for a file whose suffix says pickle: the one list (PICKLE_SUFFIXES) every check uses."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: str | os.PathLike, error=ModelError) -> None:
    """Refuse a pickle file, the one way for every kind of model: pickles can run code when
    opened. `error` makes the exception from the message (default ModelError; adapters pass
    their input error with their field)."""
    path = Path(path)
    if is_pickle(path):
        raise error(
            f"{path.name}: {path.suffix} files are pickles, which can run code when opened, so "
            "they are refused. Use the .safetensors version of the model (most are published "
            "as one) or convert it to safetensors."
        )


class ModelRegistry:
    """The models an artist can pick: built-in, scanned from `models_dir`, and configured hub ids.

    The folder follows the common convention: checkpoints (single .safetensors files or diffusers
    folders) in `models/Stable-diffusion/`, LoRAs in `models/Lora/`.
    """

    def __init__(self, models_dir: str | os.PathLike = "models", hub_ids: tuple[str, ...] = (),
                 allow_downloads: bool = True):
        self.models_dir = Path(models_dir)
        self.hub_ids = tuple(hub_ids)
        # False on a shared studio: a hub id a client names must already be in the hub cache,
        # so that a visitor cannot fill the server's disk or make it fetch what they choose.
        self.allow_downloads = allow_downloads
        self._hashes: dict[tuple[str, float, int], str] = {}
        self._families: dict[tuple[str, float, int], str | None] = {}
        self._hash_lock = threading.Lock()

    @property
    def checkpoints_dir(self) -> Path:
        return self.models_dir / CHECKPOINTS_SUBDIR

    def scan(self) -> list[ModelSource]:
        """Checkpoints found under models/Stable-diffusion (sorted by name)."""
        found: list[ModelSource] = []
        root = self.checkpoints_dir
        if not root.is_dir():
            return found
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() == ".safetensors":
                # Skip the weights inside a diffusers folder: the folder is the model.
                if any((p / "model_index.json").is_file() for p in path.parents if root in p.parents):
                    continue
                found.append(ModelSource("file", str(path), path.relative_to(root).as_posix()))
            elif path.is_dir() and (path / "model_index.json").is_file():
                found.append(ModelSource("folder", str(path), path.relative_to(root).as_posix()))
        return found

    def names(self) -> list[str]:
        """Every model name for the picker: scanned checkpoints, configured hub ids and the
        models downloaded into the hub cache, then the built-in ones."""
        from .hub import cached_models  # hub.py builds on this module

        names = [s.name for s in self.scan()]
        for repo_id in list(self.hub_ids) + cached_models():
            if repo_id not in names:
                names.append(repo_id)
        return names + list(tiny.TINY_MODELS)

    def default_name(self) -> str:
        """The first scanned checkpoint, else the first configured hub id, else tiny-random."""
        scanned = self.scan()
        if scanned:
            return scanned[0].name
        return self.hub_ids[0] if self.hub_ids else tiny.TINY_SD

    def resolve(self, name: str) -> ModelSource:
        """A ModelSource for a picker name, a path, or a hub id; ModelError if none fits."""
        name = (name or "").strip()
        if not name:
            name = self.default_name()
        if name in tiny.TINY_MODELS + tiny.FULL_SIZE_MODELS:
            return ModelSource("tiny", name, name)
        for source in self.scan():
            if name in (source.name, Path(source.name).stem):
                return source
        path = Path(name).expanduser()
        if path.exists():
            refuse_pickle(path)
            if path.is_dir():
                if not (path / "model_index.json").is_file():
                    raise ModelError(f"{path}: a model folder needs a model_index.json (diffusers "
                                     "format); for a single checkpoint give the .safetensors file")
                return ModelSource("folder", str(path), path.name)
            if path.suffix.lower() != ".safetensors":
                raise ModelError(f"{path.name}: not a .safetensors checkpoint")
            return ModelSource("file", str(path), path.stem)
        refuse_pickle(path)
        if is_hub_id(name):
            return ModelSource("hub", name, name)
        raise ModelError(
            f"unknown model {name!r}: not a file, a folder, a hub id (owner/name) or one of "
            f"{', '.join(self.names())}"
        )

    def adapter_location(self, subdir: str, name: str) -> str:
        """Where an adapter named in the settings lives: a name relative to models/<subdir>
        (what the studio, infotext and presets hold) becomes its path there; anything else (an
        explicit path from the command line, a hub id) is returned as it is."""
        if not name:
            return name
        candidate = self.models_dir / subdir / name
        if ".." not in Path(name).parts and not Path(name).is_absolute() and candidate.exists():
            return str(candidate)
        return name

    def adapter_name(self, subdir: str, location: str) -> str:
        """The inverse: a path inside models/<subdir> as its name there (so a PNG made on one
        machine loads on another); anything else as it is."""
        if not location:
            return location
        try:
            return Path(location).resolve().relative_to(
                (self.models_dir / subdir).resolve()).as_posix()
        except (ValueError, OSError):
            return location

    # -- discovery: what each models subfolder holds ---------------------------------------
    def loras(self) -> list[str]:
        """LoRA names (paths under models/Lora without .safetensors), sorted."""
        root = self.models_dir / LORA_SUBDIR
        if not root.is_dir():
            return []
        return sorted(path.relative_to(root).with_suffix("").as_posix()
                      for path in root.rglob("*.safetensors") if path.is_file())

    def adapters(self, subdir: str) -> list[str]:
        """Names under models/<subdir> (IP-Adapter or ControlNet): diffusers folders and
        .safetensors files, sorted; files inside a listed folder belong to it."""
        root = self.models_dir / subdir
        if not root.is_dir():
            return []
        found: list[str] = []
        folders: list[Path] = []
        for path in sorted(root.rglob("*")):
            if any(folder in path.parents for folder in folders):
                continue
            if path.is_dir() and (subdir == IP_ADAPTER_SUBDIR and path.parent == root
                                  or (path / "config.json").is_file()):
                # An IP-Adapter is a folder (weights plus its image encoder); a ControlNet
                # folder is one with a config.json.
                folders.append(path)
                found.append(path.relative_to(root).as_posix())
            elif path.is_file() and path.suffix.lower() == ".safetensors":
                found.append(path.relative_to(root).as_posix())
        return found

    # -- the path policy ---------------------------------------------------------------------
    def confine_adapter(self, subdir: str, value: str, field: str, hub: bool = False) -> str:
        """The name the engine uses for an adapter a client named: one listed under
        models/<subdir>, a path inside that folder (given back as its name, so infotext and
        presets hold no server paths) or, with `hub`, a hub id. Anything else (another path on
        the machine, a name escaping the folder) is an InputError naming `field`."""
        value = (value or "").strip()
        if not value:
            return ""
        listed = self.adapters(subdir)
        if value in listed:
            return value
        path = Path(value).expanduser()
        folder = (self.models_dir / subdir).resolve()
        if path.is_absolute() and path.exists() and folder in path.resolve().parents:
            return self.adapter_name(subdir, str(path))
        if hub and is_hub_id(value):
            from .hub import is_cached  # hub.py builds on this module

            if self.allow_downloads or is_cached(value):
                return value
            raise InputError(field, f"{value!r} is not downloaded on this server, and this "
                                    f"studio does not download from the hub for its visitors "
                                    f"(its owner can allow it with --allow-downloads)")
        shown = ", ".join(listed) or "none yet"
        extra = " (or give a hub id, owner/name)" if hub else ""
        raise InputError(field, f"{value!r} is not one of this studio's {subdir} models "
                                f"({shown}){extra}; put it in {self.models_dir / subdir}")

    def confine(self, params, default_model: str, detectors: dict | None = None) -> None:
        """Refuse (InputError naming the field) a job whose model or adapters are not this
        studio's: names listed under the models folder, hub ids where a hub id is allowed, and
        the model the studio was started with. Front doors pass names; only a command line
        request may name other files (JobRequest.allow_paths)."""
        model = (params.model or "").strip()
        if model and model not in self.names() and model != default_model:
            raise InputError("model", f"{model!r} is not one of this studio's models; put "
                                      f"checkpoints in {self.checkpoints_dir}")
        loras = set(self.loras())
        named = [(f"loras[{i}].name", lora.name) for i, lora in enumerate(params.loras)]
        named += [("prompt", name) for name, _ in parse_prompt_loras(params.prompt)[1]]
        for field, name in named:
            if name not in loras and Path(name).stem not in loras:
                shown = ", ".join(sorted(loras)) or "none yet"
                raise InputError(field, f"LoRA {name!r} is not in {self.models_dir / LORA_SUBDIR} "
                                        f"(available LoRAs: {shown})")
        if params.ip_adapter:
            self.confine_adapter(IP_ADAPTER_SUBDIR, params.ip_adapter, "ip_adapter", hub=True)
        for i, unit in enumerate(params.controlnets):
            self.confine_adapter(CONTROLNET_SUBDIR, unit.model, f"controlnets[{i}].model")
            if unit.detector and detectors is not None and unit.detector not in detectors:
                raise InputError(f"controlnets[{i}].detector",
                                 f"{unit.detector!r} is not one of this studio's detectors")

    def file_family(self, source: ModelSource) -> str | None:
        """'sd1', 'sd2' or 'sdxl' for a single file, read from its tensor names once per file
        version (listings ask on every refresh); None for other sources or an unreadable file."""
        if source.kind != "file":
            return None
        try:
            stat = os.stat(source.location)
        except OSError:
            return None
        key = (source.location, stat.st_mtime, stat.st_size)
        with self._hash_lock:
            if key in self._families:
                return self._families[key]
        # Here, not at the top: single_file imports torch, and this module stays torch-free.
        from .single_file import detect_family, read_keys

        try:
            family = detect_family(read_keys(source.location))
        except (ModelError, OSError, ValueError):
            family = None
        with self._hash_lock:
            self._families[key] = family
        return family

    def known_hash(self, source: ModelSource, full: bool = False) -> str:
        """The file's short hash (full: its whole sha256) if already computed (listings never
        read a whole file)."""
        if source.kind != "file":
            return ""
        try:
            stat = os.stat(source.location)
        except OSError:
            return ""
        with self._hash_lock:
            digest = self._hashes.get((source.location, stat.st_mtime, stat.st_size), "")
        return digest if full else digest[:10]

    def model_hash(self, source: ModelSource) -> str:
        """First 10 hex digits of the checkpoint file's sha256 ('' for folders and built-ins).

        Hashing a 7 GB file takes seconds, so each (path, mtime, size) is hashed once.
        """
        if source.kind != "file":
            return ""
        stat = os.stat(source.location)
        key = (source.location, stat.st_mtime, stat.st_size)
        with self._hash_lock:
            if key not in self._hashes:
                digest = hashlib.sha256()
                with open(source.location, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                self._hashes[key] = digest.hexdigest()
            return self._hashes[key][:10]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _has_fp16_variant(folder: Path, torch_dtype) -> bool:
    """True when the folder ships fp16 weight files (name.fp16.safetensors) for every model."""
    import torch

    if torch_dtype != torch.float16:
        return False
    weighted = [d for d in folder.iterdir() if d.is_dir() and any(d.glob("*.safetensors"))]
    return bool(weighted) and all(any(d.glob("*.fp16.safetensors")) for d in weighted)


def _cached_fp16_only(repo_id: str, torch_dtype) -> bool:
    """True when the hub cache's copy of `repo_id` has fp16 weight files for every model and
    either the engine runs in fp16 or the plain weights are not there (a studio download)."""
    import torch
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(index, str):
        return False
    folder = Path(index).parent
    weighted = [d for d in folder.iterdir() if d.is_dir() and any(d.glob("*.safetensors"))]
    if not weighted or not all(any(d.glob("*.fp16.safetensors")) for d in weighted):
        return False
    plain = all(any(f for f in d.glob("*.safetensors") if ".fp16." not in f.name)
                for d in weighted)
    return torch_dtype == torch.float16 or not plain


def pipeline_family(pipe) -> str:
    """'sd1', 'sd2' or 'sdxl' from a loaded pipeline's structure: SDXL has a second text
    encoder; SD 2.x shares the SD 1.x classes but its UNet reads 1024-wide OpenCLIP text."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if pipe.unet.config.cross_attention_dim == 1024 else "sd1"


def load(source: ModelSource, torch_dtype):
    """(img2img pipeline, family) for `source`; the pipeline is on the CPU and the caller moves
    it to its device. The family is read once here, from the checkpoint's own tensor names for
    a single file (a tiny SD 2.x file is shaped like SD 1.x) and from the structure otherwise."""
    if source.kind == "tiny":
        import torch

        pipe = tiny.build_pipeline(source.location)
        pipe = pipe if torch_dtype == torch.float32 else pipe.to(dtype=torch_dtype)
        return pipe, pipeline_family(pipe)
    if source.kind == "file":
        from .single_file import detect_family, load_single_file, read_keys

        family = detect_family(read_keys(source.location))
        return load_single_file(source.location, torch_dtype=torch_dtype, family=family), family
    from diffusers import AutoPipelineForImage2Image

    location = source.location
    extra = {}
    if source.kind == "folder" and _has_fp16_variant(Path(location), torch_dtype):
        # Half the download size and load time, and no fp32 -> fp16 cast on load.
        extra["variant"] = "fp16"
    elif source.kind == "hub" and _cached_fp16_only(location, torch_dtype):
        # The studio's downloads fetch the fp16 set only (half the size); the library loads it
        # as such, upcast where the engine runs in fp32.
        extra["variant"] = "fp16"
    try:
        pipe = AutoPipelineForImage2Image.from_pretrained(
            location, torch_dtype=torch_dtype, use_safetensors=True, **extra,
            local_files_only=source.kind == "folder" or _offline(),
            safety_checker=None, requires_safety_checker=False,
        )
    except (OSError, ValueError, EnvironmentError) as exc:
        if source.kind == "hub":
            how = ("the machine is offline (HF_HUB_OFFLINE is set) and the model is not in the "
                   "hub cache. Run once with network access so it is downloaded and cached, or "
                   "download it elsewhere and put the folder in models/Stable-diffusion/."
                   if _offline() else
                   "check the id and your network access (gated models need `hf auth login`).")
            raise ModelError(f"hub model {location!r} could not be loaded: {how} ({exc})") from None
        raise ModelError(f"{location}: not a loadable diffusers model folder ({exc})") from None
    return pipe, pipeline_family(pipe)
