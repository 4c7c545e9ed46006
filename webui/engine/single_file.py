"""Single-file Stable Diffusion checkpoints: one `.safetensors` in the original (non-diffusers) layout.

Such a file holds only weights. The component configs (UNet shape, scheduler, tokenizer, ...) come
from a diffusers-format config folder, looked up in this order:

1. the `config_dir` the caller passes;
2. `<models root>/configs/<file stem>/`, then `<models root>/configs/<family>/`, where the models root
   is the parent of the `Stable-diffusion` folder holding the file (else the file's own folder);
3. the hub cache, strictly offline-first (the library fetches config files only, never weights).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from diffusers.loaders.single_file_utils import (SingleFileComponentError,
                                                 convert_open_clip_checkpoint)
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors import SafetensorError, safe_open

from ..errors import ModelError
from .models import FAMILY_LABELS, refuse_pickle

FAMILIES = tuple(FAMILY_LABELS)

_UNET = "model.diffusion_model."
_SDXL_OPEN_CLIP = "conditioner.embedders.1."
_SDXL_REFINER_OPEN_CLIP = "conditioner.embedders.0.model."
_SD2_OPEN_CLIP = "cond_stage_model.model."
_SD1_CLIP = "cond_stage_model.transformer."
_MODEL_INDEX = "model_index.json"


def _check_suffix(path: Path) -> None:
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path.name}: only .safetensors checkpoints are supported")


def read_keys(path) -> list[str]:
    """The tensor names in a `.safetensors` file, read from its header only (no weights are read)."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        # The header check also validates the data length, so a cut-off download fails here.
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path.name} is not a valid .safetensors file (truncated or corrupt download, or not a "
            f"safetensors file at all): {exc}. Download it again."
        ) from exc


def _not_a_checkpoint_hint(keys: list[str]) -> str:
    if any(k.startswith("lora_") or "lora_down" in k or "lora_A" in k or ".hada_" in k
           or ".lokr_" in k for k in keys):
        return "this looks like a LoRA, put it in models/Lora/ and use it as a LoRA"
    if any(k in ("emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in keys):
        return "this looks like a textual-inversion embedding, put it in embeddings/"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys) and not any(
        k.startswith(_UNET) for k in keys
    ):
        return "this looks like a VAE, put it in models/VAE/"
    return ""


def detect_family(keys) -> str:
    """"sd1", "sd2" or "sdxl" from a checkpoint's tensor names; ModelError when it is none of them."""
    keys = list(keys)
    hint = _not_a_checkpoint_hint(keys)
    if hint:
        raise ModelError(f"not a Stable Diffusion checkpoint: {hint}")
    if any(k.startswith(_UNET) for k in keys):
        if any(k.startswith(_SDXL_OPEN_CLIP) for k in keys):
            return "sdxl"
        if any(k.startswith(_SDXL_REFINER_OPEN_CLIP) for k in keys):
            raise ModelError("this is an SDXL refiner checkpoint; refiners are not supported yet")
        if any(k.startswith(_SD2_OPEN_CLIP) for k in keys):
            return "sd2"
        if any(k.startswith(_SD1_CLIP) for k in keys):
            return "sd1"
    sample = ", ".join(keys[:3]) or "no tensors at all"
    raise ModelError(
        "not a Stable Diffusion 1.x/2.x/XL checkpoint in the original single-file layout "
        f"(first tensor names: {sample})"
    )


def models_root(path) -> Path:
    """The parent of the nearest `Stable-diffusion` folder holding `path`, else the file's folder."""
    path = Path(path).absolute()
    for parent in path.parents:
        if parent.name.lower() == "stable-diffusion":
            return parent.parent
    return path.parent


def _is_config_folder(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if not (folder / _MODEL_INDEX).is_file():
        raise ModelError(
            f"config folder {folder} has no {_MODEL_INDEX}; it must be a diffusers-format folder "
            "(model_index.json plus each component's config and the tokenizer)"
        )
    return True


def find_config_dir(path, family: str, config_dir=None) -> Path | None:
    """The local config folder for a checkpoint, or None to fall back on the hub cache."""
    if config_dir is not None:
        config_dir = Path(config_dir)
        if not config_dir.is_dir():
            raise ModelError(f"config folder not found: {config_dir}")
        _is_config_folder(config_dir)
        return config_dir
    configs = models_root(path) / "configs"
    for candidate in (configs / Path(path).stem, configs / family):
        if _is_config_folder(candidate):
            return candidate
    return None


def _not_cached_message(path: Path, family: str) -> str:
    label = FAMILY_LABELS[family]
    return (
        f"{path.name} is an {label} checkpoint ({family}), but the {label} component configs are not "
        "cached and no local config folder was found. Either run once with internet access so they "
        f"are cached, or put a diffusers-format config folder (model_index.json plus each "
        f"component's config and the tokenizer) at models/configs/{family}/ "
        f"(looked in {models_root(path) / 'configs'})."
    )


def _is_offline_failure(exc: BaseException) -> bool:
    # Walk the cause chain: the library sometimes re-raises hub errors wrapped in its own.
    while exc is not None:
        if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError,
                            ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reload_open_clip(pipe, path: Path) -> None:
    """Load SDXL's second text encoder from its own tensors.

    The library picks the CLIP-L converter for any text encoder whose width equals the first
    encoder's, so when both encoders are equally wide (small test models) the second one gets the
    first one's weights and no projection. Real SDXL (768 vs 1280 wide) never hits this.
    """
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(_SDXL_OPEN_CLIP)}
    model = pipe.text_encoder_2
    state = convert_open_clip_checkpoint(model, tensors, prefix=_SDXL_OPEN_CLIP + "model.")
    # Match the first encoder, which the library loaded with the caller's dtype.
    state = {k: v.to(pipe.text_encoder.dtype) for k, v in state.items()}
    # assign=True replaces meta placeholders left by the library's empty-weights init.
    with torch.no_grad():
        model.load_state_dict(state, strict=True, assign=True)
    model.eval()


def _check_complete(pipe, path: Path) -> None:
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            if any(p.is_meta for p in module.parameters()):
                raise ModelError(f"{path.name} is incomplete: it lacks weights for the {name}")
            # The library sets eval mode already; a module left in train mode changes outputs.
            module.eval()


def load_single_file(path, *, config_dir=None, torch_dtype=None, family: str | None = None):
    """An img2img pipeline from one original-layout `.safetensors` checkpoint, safety checker off.

    family: the checkpoint's family when the caller has read it already (detect_family);
    otherwise it is read here. Raises ModelError, never a library traceback, for refused,
    corrupt, unrecognised or unconfigurable files.
    """
    path = Path(path)
    family = family or detect_family(read_keys(path))
    config = find_config_dir(path, family, config_dir)

    kwargs = {"local_files_only": True, "torch_dtype": torch_dtype}
    if family == "sdxl":
        cls = StableDiffusionXLImg2ImgPipeline
    else:
        cls = StableDiffusionImg2ImgPipeline
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if config is not None:
        kwargs["config"] = str(config)
    try:
        pipe = cls.from_single_file(str(path), **kwargs)
        if family == "sdxl":
            ours = pipe.text_encoder_2.config.hidden_size
            theirs = pipe.text_encoder.config.hidden_size
            if ours == theirs:
                _reload_open_clip(pipe, path)
    except ModelError:
        raise
    except Exception as exc:
        if isinstance(exc, SingleFileComponentError):
            # Keep the library's first line only; the rest is advice for its own API.
            reason = str(exc).strip().splitlines()[0]
            raise ModelError(f"{path.name} is incomplete: {reason}") from exc
        if "meta tensor" in str(exc):
            # A weight the config asks for is absent, so the library left it unallocated.
            raise ModelError(f"{path.name} is incomplete: some model weights are missing") from exc
        if config is None and _is_offline_failure(exc):
            raise ModelError(_not_cached_message(path, family)) from exc
        where = f"the configs in {config}" if config is not None else "the cached hub configs"
        raise ModelError(
            f"could not load {path.name} as an {FAMILY_LABELS[family]} checkpoint with {where}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    _check_complete(pipe, path)
    _set_prediction_type(pipe, path, family)
    return pipe


def prediction_type(path: Path, family: str, unet=None) -> tuple[str, dict]:
    """('epsilon' or 'v_prediction', extra scheduler settings) for a checkpoint file.

    A single file does not say what its UNet predicts, and a v-prediction model sampled as
    epsilon makes grey mush. In order, what tells: an original config beside the file
    (`<name>.yaml` with `parameterization: "v"`, the usual way to ship SD 2.x 768 models), the
    file's ModelSpec metadata (`modelspec.prediction_type`), a `v_pred` marker tensor, and, for
    a full-size SD 2.x UNet that none of these describes, the UNet itself (see
    _predicts_velocity). A `ztsnr` marker (zero terminal SNR training) also asks for rescaled
    betas and trailing timesteps.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        keys = set(handle.keys())
    extra = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"} \
        if "ztsnr" in keys else {}
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8", errors="replace")[:100_000]
        match = re.search(r"^[ \t]*parameterization:[ \t]*[\"']?(\w+)", text, re.M)
        if match:
            return ("v_prediction" if match[1] == "v" else "epsilon"), extra
    declared = metadata.get("modelspec.prediction_type", "").strip().lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", extra
    if declared == "epsilon":
        return "epsilon", extra
    if "v_pred" in keys:
        return "v_prediction", extra
    if family == "sd2" and unet is not None and unet.config.cross_attention_dim == 1024 \
            and _predicts_velocity(unet):
        return "v_prediction", extra
    return "epsilon", extra


def _predicts_velocity(unet) -> bool:
    """Whether a UNet predicts velocity rather than noise, from one step at the last timestep.

    There the noisy latent is almost pure noise: a noise predictor returns about the input, a
    velocity predictor about its negative. With real weights the two are far apart (a mean of
    -1 or less for v); random test weights say nothing, which is why this only runs for a
    full-size SD 2.x UNet without any description. The UNet is run in fp32 (half precision on
    the CPU is not supported everywhere) and cast back, which is exact.
    """
    dtype = unet.dtype
    try:
        unet.to(torch.float32)
        with torch.no_grad():
            x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=unet.device)
            context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=unet.device)
            out = unet(x, torch.tensor([999], device=unet.device), context).sample
        return (out - x).mean().item() < -1
    finally:
        unet.to(dtype)


def _set_prediction_type(pipe, path: Path, family: str) -> None:
    kind, extra = prediction_type(path, family, pipe.unet)
    config = pipe.scheduler.config
    wanted = {"prediction_type": kind, **extra}
    if any(config.get(k) != v for k, v in wanted.items()):
        pipe.scheduler = type(pipe.scheduler).from_config(config, **wanted)


def write_config_folder(pipe, folder) -> Path:
    """Write a pipeline's configs and tokenizers, without any weights, as a usable `config_dir`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json
    for name, component in pipe.components.items():
        if component is None:
            continue
        target = folder / name
        if hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(target)
        elif hasattr(component, "config") and hasattr(component.config, "save_pretrained"):
            component.config.save_pretrained(target)  # transformers models: config only
        elif hasattr(component, "save_pretrained"):  # tokenizers, image processors: small files
            component.save_pretrained(target)
    return folder
