"""From the API's request bodies to the engine's JobRequest, and from its Result back to the
API's response: pictures in base64, sampler and schedule names, inpaint fields, styles,
infotext, override settings and ControlNet units.

Every refusal is an InputError naming the request's own field (`init_images[0]`,
`alwayson_scripts.controlnet.args[1].model`, ...), which the routes turn into a 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
from typing import Any

from PIL import Image, ImageOps

from .. import images as imaging
from .. import infotext, presets, schedulers
from ..engine import (CONTROLNET_SUBDIR, EngineAPI, InputError, JobRequest, Result, mask_to_l,
                      read_infotext)
from ..params import MASKED_CONTENT, RESIZE_MODES, GenerationParams, ParamsError, make
from .schema import GenerationBody, Img2ImgBody, Txt2ImgBody

# The schedules clients may name (A1111's lower-case names); any other is refused with this
# list. The engine's samplers carry their schedule in their name: "DPM++ 2M" + karras =
# "DPM++ 2M Karras".
SCHEDULES = ("automatic", *(name.casefold() for name in schedulers.SCHEDULE_FLAGS))
# A1111's resize modes 0-3; 3 (latent upscale) has no latent path here and resizes the picture.
RESIZE_BY_NUMBER = {0: RESIZE_MODES[0], 1: RESIZE_MODES[1], 2: RESIZE_MODES[2],
                    3: RESIZE_MODES[0]}
# inpainting_fill 0-3, in the order the clients number them.
FILL_BY_NUMBER = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
assert set(FILL_BY_NUMBER.values()) == set(MASKED_CONTENT)
# Upscalers the hires fix accepts: a picture resize (Lanczos) for all of them, said in the
# infotext; latent names are accepted because clients send the default "Latent".
UPSCALERS = ("None", "Lanczos", "Nearest")
LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)",
                        "Latent (bicubic antialiased)", "Latent (nearest)",
                        "Latent (nearest-exact)")
# ControlNet extension module names -> this studio's preprocessors.
CONTROLNET_MODULES = {"none": "none", "canny": "canny", "depth": "depth", "depth_midas": "depth",
                      "depth_anything": "depth", "depth_anything_v2": "depth",
                      "depth_zoe": "depth", "openpose": "pose", "openpose_full": "pose",
                      "dw_openpose_full": "pose", "openpose_face": "pose"}
_DATA_URL = re.compile(r"^data:(?P<type>[\w/+.-]*)(;[\w=.-]+)*;base64,", re.IGNORECASE)
_HASHED = re.compile(r"^(?P<name>.*?)\s*\[[0-9a-fA-F]{8,64}\]$")
# Largest decoded picture accepted in one field (the studio's upload limit is the same).
MAX_IMAGE_BYTES = 64 * 1024 * 1024


# -- pictures --------------------------------------------------------------------------------
def decode_bytes(text: Any, field: str) -> bytes:
    """The file a client sent as base64 or a data: URL; InputError naming `field` otherwise.
    URLs are refused: the server never fetches anything a client points it at."""
    if not isinstance(text, str):
        raise InputError(field, f"{field} must be a base64 picture (text), got "
                         f"{type(text).__name__}")
    text = text.strip()
    if text.lower().startswith(("http://", "https://", "file:")):
        raise InputError(field, f"{field}: URLs are not fetched; send the picture itself, "
                         "base64-encoded (or as a data: URL)")
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end():]
    elif text.lower().startswith("data:"):
        raise InputError(field, f"{field}: a data: URL must be base64 (data:image/png;base64,...)")
    if len(text) * 3 // 4 > MAX_IMAGE_BYTES:
        raise InputError(field, f"{field}: the picture is larger than "
                         f"{MAX_IMAGE_BYTES // 2**20} MB")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, f"{field}: not valid base64") from None
    if not data:
        raise InputError(field, f"{field}: no picture given (empty)")
    return data


def decode_image(text: Any, field: str, keep_alpha: bool = False) -> Image.Image:
    """A picture from base64 or a data: URL, read as the studio reads uploads."""
    return imaging.load_image(decode_bytes(text, field), field, keep_alpha=keep_alpha)


def open_png(text: Any, field: str = "image") -> Image.Image:
    """The sent picture as the file holds it (its text chunks kept), for /png-info."""
    return imaging.open_image(decode_bytes(text, field), field, load=False)


def encode_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_picture(image: Image.Image) -> str:
    """A base64 PNG of a preview or control picture (no settings inside)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return encode_png(buffer.getvalue())


# -- names -----------------------------------------------------------------------------------
def sampler(name: str | None, schedule: str | None, field: str = "sampler_name") -> str:
    """The engine's sampler for a client's sampler and schedule names; InputError otherwise."""
    name = (name or "Euler").strip()
    try:
        chosen = schedulers.canonical(name)
    except ValueError:
        raise InputError(field, f"{field}: unknown sampler {name!r}; available: "
                         f"{', '.join(schedulers.SCHEDULERS)}") from None
    kind = (schedule or "automatic").strip().casefold()
    schedule_field = "scheduler" if field == "sampler_name" else field.replace(
        "sampler_name", "scheduler")
    if kind not in SCHEDULES:
        raise InputError(schedule_field, f"{schedule_field}: {schedule!r} is not available here; "
                         f"use one of: {', '.join(SCHEDULES)}")
    if kind == "automatic":
        return chosen
    label = next(s for s in schedulers.SCHEDULE_FLAGS if s.casefold() == kind)
    base, current = schedulers.split_schedule(chosen)
    if current == label:
        return chosen
    named = f"{base} {label}"
    if current != "Automatic" or named not in schedulers.SCHEDULERS:
        raise InputError(schedule_field, f"{schedule_field}: the sampler {chosen!r} has no "
                         f"{label} schedule here; use scheduler 'automatic'")
    return named


def checkpoint_name(engine: EngineAPI, text: Any, field: str) -> str:
    """The engine's model name for a checkpoint a client names: a title from /sd-models
    ("name [hash]"), the name itself, or its file name without the extension."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(field, f"{field} must be a checkpoint title from /sd-models")
    wanted = text.strip()
    match = _HASHED.match(wanted)
    bare = match["name"] if match else wanted
    names = engine.models()
    for name in names:
        if wanted == name or bare == name:
            return name
    for name in names:
        if bare in (model_stem(name), name.rsplit("/", 1)[-1]):
            return name
    raise InputError(field, f"{field}: unknown checkpoint {wanted!r}; available: "
                     f"{', '.join(titles(engine)) or 'none'}")


def model_stem(name: str) -> str:
    """A model's name without folders and extension (the clients' model_name)."""
    last = name.rsplit("/", 1)[-1]
    # Single files are listed only as .safetensors (the engine refuses pickles); a folder's
    # name keeps its dots ("sd-v1.5").
    if last.lower().endswith(".safetensors"):
        return last[: -len(".safetensors")]
    return last


def title(name: str, short_hash: str) -> str:
    return f"{name} [{short_hash}]" if short_hash else name


def titles(engine: EngineAPI) -> list[str]:
    return [title(info.name, info.hash) for info in engine.list_models()]


# -- requests --------------------------------------------------------------------------------
def _refuse_unsupported(body: GenerationBody) -> None:
    if body.subseed_strength:
        raise InputError("subseed_strength", "subseed_strength: variation seeds are not "
                         "available here; send 0")
    if body.restore_faces:
        raise InputError("restore_faces", "restore_faces: face restoration is not available "
                         "here; send false")
    if body.tiling:
        raise InputError("tiling", "tiling is not available here; send false")
    if body.script_name:
        raise InputError("script_name", f"script_name: no scripts are available here (got "
                         f"{body.script_name!r}); see /scripts")
    clip = body.override_settings.get("CLIP_stop_at_last_layers", 1)
    if clip not in (1, None) or isinstance(clip, bool):
        raise InputError("override_settings.CLIP_stop_at_last_layers",
                         "override_settings.CLIP_stop_at_last_layers: clip skip is not "
                         f"available here; only 1 is (got {clip!r})")


# GenerationParams field -> the request field it comes from (also names the request's field
# in error messages about a setting).
REQUEST_FIELDS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                  "steps": "steps", "guidance_scale": "cfg_scale", "width": "width",
                  "height": "height", "batch_size": "batch_size", "batch_count": "n_iter",
                  "strength": "denoising_strength", "pag_scale": "pag_scale", "draft": "draft",
                  "model": "override_settings.sd_model_checkpoint", "scheduler": "sampler_name",
                  "mask_blur": "mask_blur", "inpaint_padding": "inpaint_full_res_padding",
                  "masked_content": "inpainting_fill", "resize_mode": "resize_mode"}
# The settings every request sends under its own name (the others come by endpoint: extra).
_DIRECT = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
           "batch_size", "batch_count", "pag_scale", "draft")


def _values(body: GenerationBody, strength: float, model: str) -> dict[str, tuple[str, Any]]:
    """GenerationParams field -> (the request field it comes from, value)."""
    pairs = {name: (REQUEST_FIELDS[name], getattr(body, REQUEST_FIELDS[name]))
             for name in _DIRECT}
    pairs["strength"] = (REQUEST_FIELDS["strength"], strength)
    pairs["model"] = (REQUEST_FIELDS["model"], model)
    return pairs


def api_field(params_field: str) -> str:
    """The request's name for a GenerationParams field (for error messages)."""
    head, dot, rest = params_field.partition(".")
    if head.startswith("controlnets"):
        return "alwayson_scripts.controlnet.args" + head[len("controlnets"):] + dot + rest
    return REQUEST_FIELDS.get(params_field, params_field)


def _make(values: dict[str, Any]) -> GenerationParams:
    try:
        return make(**values)
    except ParamsError as exc:
        field = api_field(exc.field)
        message = str(exc)
        if message.startswith(exc.field):
            message = field + message[len(exc.field):]
        raise InputError(field, message) from None


def build_params(engine: EngineAPI, body: GenerationBody, model: str, styles: presets.PresetStore,
                 strength: float, extra: dict[str, tuple[str, Any]] | None = None
                 ) -> GenerationParams:
    """The job's settings: the request's fields, then the infotext for the fields the request
    does not send, then the styles for settings neither names."""
    _refuse_unsupported(body)
    sent = body.model_fields_set
    override = body.override_settings.get("sd_model_checkpoint")
    if override is not None:
        model = checkpoint_name(engine, override, "override_settings.sd_model_checkpoint")
    pairs = _values(body, strength, model)
    values: dict[str, Any] = {name: value for name, (_, value) in pairs.items()}
    values["scheduler"] = sampler(body.sampler_name or body.sampler_index, body.scheduler)
    pairs.update(extra or {})  # (request field, value) per setting, as _values gives
    values.update({name: value for name, (_, value) in (extra or {}).items()})
    from_text: set[str] = set()
    if body.infotext:
        parsed = infotext.parse(body.infotext)
        read = parsed.params.model_dump()
        sampler_sent = {"sampler_name", "sampler_index", "scheduler"} & sent
        for name in parsed.fields:
            source = pairs.get(name, (name, None))[0]
            if name == "scheduler" and sampler_sent:
                continue
            if name == "model":
                # A model named in the text must be one of this engine's (never a path).
                if override is None:
                    values["model"] = checkpoint_name(engine, read["model"], "infotext")
                continue
            if source and source not in sent:  # an empty source: fixed by the endpoint
                values[name] = read[name]
                from_text.add(name)
    chosen = [_style(styles, name, index) for index, name in enumerate(body.styles)]
    params = _make(values)
    for preset in chosen:
        params = _apply_style(preset, params, sent, from_text, pairs)
    return params


def _style(store: presets.PresetStore, name: Any, index: int) -> presets.Preset:
    field = f"styles[{index}]"
    listing = store.list()
    preset = listing.find(name) if isinstance(name, str) else None
    if preset is None:
        raise InputError(field, f"{field}: unknown style {name!r}; available: "
                         f"{', '.join(listing.names()) or 'none'}")
    return preset


def _apply_style(preset: presets.Preset, params: GenerationParams, sent: set[str],
                 from_text: set[str], pairs: dict[str, tuple[str, Any]]) -> GenerationParams:
    """A style wraps the prompt in its template and adds its negative prompt; its other
    settings fill only what the request (or its infotext) leaves unset."""
    changes: dict[str, Any] = {"prompt": presets.wrap_prompt(preset, params.prompt)}
    negative = preset.settings.get("negative_prompt")
    if negative:
        mine = params.negative_prompt.strip()
        changes["negative_prompt"] = f"{mine}, {negative}" if mine else negative
    for name, value in preset.settings.items():
        if name in ("prompt", "negative_prompt", "model"):
            continue
        source = pairs.get(name, (name, None))[0]
        if source in sent or name in from_text:
            continue
        if name in pairs or name in ("scheduler",):
            if name == "scheduler" and ({"sampler_name", "sampler_index", "scheduler"} & sent):
                continue
            changes[name] = value
    return _make({**params.model_dump(), **changes})


def _controlnet_units(engine: EngineAPI, scripts: dict[str, Any], init_given: bool
                      ) -> tuple[list[dict], list]:
    """(ControlNet unit settings, their control pictures) from alwayson_scripts."""
    units: list[dict] = []
    pictures: list = []
    for key, script in scripts.items():
        if str(key).strip().casefold() != "controlnet":
            raise InputError(f"alwayson_scripts.{key}", f"alwayson_scripts: unknown script "
                             f"{key!r}; only 'controlnet' is available here")
        args = script.get("args") if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise InputError(f"alwayson_scripts.{key}.args", f"alwayson_scripts.{key}.args "
                             "must be a list of ControlNet units")
        for index, unit in enumerate(args):
            field = f"alwayson_scripts.{key}.args[{index}]"
            if not isinstance(unit, dict):
                raise InputError(field, f"{field} must be an object (a ControlNet unit)")
            if unit.get("enabled", True) is False:
                continue
            model = unit.get("model")
            if model in (None, "", "None", "none"):
                continue
            if not isinstance(model, str):
                raise InputError(f"{field}.model", f"{field}.model must be a model name")
            match = _HASHED.match(model.strip())
            name = engine.check_adapter(CONTROLNET_SUBDIR, match["name"] if match else
                                        model.strip(), f"{field}.model")
            module = unit.get("module", "none")
            if not isinstance(module, str) or module.strip().casefold() not in CONTROLNET_MODULES:
                raise InputError(f"{field}.module", f"{field}.module: unknown preprocessor "
                                 f"{module!r}; available: {', '.join(CONTROLNET_MODULES)}")
            picture = unit.get("image", unit.get("input_image"))
            if isinstance(picture, dict):
                picture = picture.get("image")
            settings = {"model": name,
                        "preprocessor": CONTROLNET_MODULES[module.strip().casefold()],
                        "scale": unit.get("weight", 1.0),
                        "start": unit.get("guidance_start", 0.0),
                        "end": unit.get("guidance_end", 1.0)}
            for ours, theirs in (("low", "threshold_a"), ("high", "threshold_b")):
                value = unit.get(theirs)
                if settings["preprocessor"] == "canny" and value not in (None, -1):
                    settings[ours] = int(value) if isinstance(value, (int, float)) and \
                        not isinstance(value, bool) and value == value else value
            if picture in (None, ""):
                if not init_given:
                    raise InputError(f"{field}.image", f"{field}.image: give the control "
                                     "picture (txt2img has no init image to use)")
                settings["source"] = "init image"
                pictures.append(None)
            else:
                settings["source"] = "upload"
                pictures.append(decode_image(picture, f"{field}.image"))
            units.append(settings)
    return units, pictures


def img2img_request(engine: EngineAPI, body: Img2ImgBody, model: str,
                    styles: presets.PresetStore, owner: str | None) -> JobRequest:
    if not body.init_images:
        raise InputError("init_images", "init_images: give the picture to transform (one "
                         "base64 image)")
    if len(body.init_images) > 1:
        raise InputError("init_images", "init_images: one picture per request here (got "
                         f"{len(body.init_images)})")
    init = decode_image(body.init_images[0], "init_images[0]")
    if body.resize_mode not in RESIZE_BY_NUMBER:
        raise InputError("resize_mode", "resize_mode must be 0, 1, 2 or 3 (got "
                         f"{body.resize_mode})")
    extra: dict[str, tuple[str, Any]] = {
        "resize_mode": ("resize_mode", RESIZE_BY_NUMBER[body.resize_mode])}
    mask = None
    if body.mask:
        mask = decode_image(body.mask, "mask", keep_alpha=True)
        if body.inpainting_fill not in FILL_BY_NUMBER:
            raise InputError("inpainting_fill", "inpainting_fill must be 0 (fill), 1 "
                             "(original), 2 (latent noise) or 3 (latent nothing) (got "
                             f"{body.inpainting_fill})")
        if body.inpainting_mask_invert not in (0, 1):
            raise InputError("inpainting_mask_invert", "inpainting_mask_invert must be 0 or 1 "
                             f"(got {body.inpainting_mask_invert})")
        mask = mask_to_l(mask)
        if body.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        if body.mask_blur is not None:
            blur_field, blur = "mask_blur", body.mask_blur
        else:
            # One blur here for both directions: the larger, each checked on its own.
            for name in ("mask_blur_x", "mask_blur_y"):
                if getattr(body, name) < 0:
                    raise InputError(name, f"{name} must be at least 0 (got "
                                     f"{getattr(body, name)})")
            blur_field = max(("mask_blur_x", "mask_blur_y"), key=lambda n: getattr(body, n))
            blur = getattr(body, blur_field)
        extra.update(
            mask_blur=(blur_field, blur),
            masked_content=("inpainting_fill", FILL_BY_NUMBER[body.inpainting_fill]),
            inpaint_area=("inpaint_full_res",
                          "only masked" if body.inpaint_full_res else "whole picture"),
            inpaint_padding=("inpaint_full_res_padding", body.inpaint_full_res_padding))
    units, pictures = _controlnet_units(engine, body.alwayson_scripts, init_given=True)
    if units:
        extra["controlnets"] = ("alwayson_scripts", units)
    params = build_params(engine, body, model, styles, body.denoising_strength, extra)
    return JobRequest(params=params, init_image=init, mask=mask,
                      control_images=pictures if units else None, save=body.save_images,
                      owner=owner)


def txt2img_request(engine: EngineAPI, body: Txt2ImgBody, model: str,
                    styles: presets.PresetStore, owner: str | None) -> JobRequest:
    units, pictures = _controlnet_units(engine, body.alwayson_scripts, init_given=False)
    extra = {"controlnets": ("alwayson_scripts", units)} if units else {}
    # txt2img has no denoising strength: the infotext's must not fill it.
    extra["strength"] = ("", 1.0)
    params = build_params(engine, body, model, styles, 1.0, extra)
    return JobRequest(params=params, task="txt2img", control_images=pictures if units else None,
                      save=body.save_images, owner=owner)


def hires_size(body: Txt2ImgBody, width: int, height: int) -> tuple[int, int]:
    """The hires fix's final size (hr_resize_x/y, else hr_scale times the first pass)."""
    if body.hr_resize_x > 0 or body.hr_resize_y > 0:
        w = body.hr_resize_x or round(body.hr_resize_y * width / height)
        h = body.hr_resize_y or round(body.hr_resize_x * height / width)
    else:
        if not 1.0 <= body.hr_scale <= 4.0:
            raise InputError("hr_scale", f"hr_scale must be from 1 to 4 (got {body.hr_scale:g})")
        w, h = round(width * body.hr_scale), round(height * body.hr_scale)
    for field, value in (("hr_resize_x", w), ("hr_resize_y", h)):
        if not 64 <= value <= 4096:
            raise InputError(field, f"{field}: the hires fix's size must be from 64 to 4096 "
                             f"pixels (got {value})")
    return w, h


def hires_requests(engine: EngineAPI, body: Txt2ImgBody, first: Result,
                   styles: presets.PresetStore, owner: str | None) -> list[JobRequest]:
    """One img2img job per first-pass picture: upscaled to the final size and repainted at
    denoising_strength (the hires fix)."""
    upscaler = body.hr_upscaler or "Latent"
    if upscaler not in UPSCALERS and upscaler not in LATENT_UPSCALE_MODES:
        raise InputError("hr_upscaler", f"hr_upscaler: unknown upscaler {upscaler!r}; available: "
                         f"{', '.join(UPSCALERS + LATENT_UPSCALE_MODES)}")
    width, height = hires_size(body, first.width, first.height)
    model = first.params.model
    if body.hr_checkpoint_name and body.hr_checkpoint_name != "Use same checkpoint":
        model = checkpoint_name(engine, body.hr_checkpoint_name, "hr_checkpoint_name")
    scheduler = first.params.scheduler
    if body.hr_sampler_name and body.hr_sampler_name != "Use same sampler":
        scheduler = sampler(body.hr_sampler_name, body.hr_scheduler or body.scheduler,
                            "hr_sampler_name")
    steps = body.hr_second_pass_steps or first.params.steps
    # An img2img pass runs steps x strength; the second pass's steps are the ones it runs.
    strength = body.denoising_strength
    if not 0.0 <= strength <= 1.0:
        raise InputError("denoising_strength", "denoising_strength must be from 0 to 1 (got "
                         f"{strength:g})")
    total = steps if strength == 0 else min(150, max(1, round(steps / strength)))
    requests = []
    for item in first.images:
        params = _make({**first.params.model_dump(), "prompt": body.hr_prompt or first.params.prompt,
                        "negative_prompt": body.hr_negative_prompt or first.params.negative_prompt,
                        "model": model, "scheduler": scheduler, "steps": total,
                        "strength": strength, "width": width, "height": height,
                        "seed": item.seed, "batch_size": 1, "batch_count": 1,
                        "controlnets": []})
        extra = {"Hires upscale": f"{width / first.width:.6g}",
                 "Hires resize": f"{width}x{height}", "Hires steps": steps,
                 "Hires upscaler": "Lanczos",
                 "First pass size": f"{first.width}x{first.height}"}
        requests.append(JobRequest(params=params, init_image=item.image, save=body.save_images,
                                   owner=owner, infotext_extra=extra))
    return requests


# -- responses -------------------------------------------------------------------------------
def parameters(body: GenerationBody) -> dict[str, Any]:
    """The request as read, pictures left out unless the client asked for them back."""
    data = body.model_dump(mode="json")
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        data["init_images"] = None
        data["mask"] = None
    return data


def info(body: GenerationBody, result: Result, model_hash: str, styles: list[str],
         started: float, extra: dict[str, Any] | None = None,
         first: Result | None = None) -> str:
    """The response's `info`: a JSON string with the keys the API's clients read. `first`: a
    hires fix's first pass, whose prompts and steps are the ones the request asked for (the
    second pass's own are in its infotexts and in extra_generation_params)."""
    params = result.params
    asked = (first or result).params
    base, schedule = schedulers.split_schedule(params.scheduler)
    count = len(result.images)
    seeds = [item.seed for item in result.images]
    generation = {"Schedule type": schedule}
    if params.pag_scale:
        generation["PAG scale"] = params.pag_scale
    if params.draft:
        generation["Draft"] = params.draft
    if result.notice:
        generation["Notice"] = result.notice
    generation.update(extra or {})
    data = {
        "prompt": asked.prompt, "all_prompts": [asked.prompt] * count,
        "negative_prompt": asked.negative_prompt,
        "all_negative_prompts": [asked.negative_prompt] * count,
        "seed": result.seed, "all_seeds": seeds,
        "subseed": result.seed, "all_subseeds": seeds, "subseed_strength": 0,
        "width": result.width, "height": result.height, "sampler_name": base,
        "cfg_scale": params.guidance_scale, "steps": asked.steps,
        "batch_size": params.batch_size, "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": model_stem(result.model),
        "sd_model_hash": model_hash or None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": (params.strength if isinstance(body, Img2ImgBody) or
                               (isinstance(body, Txt2ImgBody) and body.enable_hr) else 0),
        "extra_generation_params": generation, "index_of_first_image": 0,
        "infotexts": [item.infotext for item in result.images], "styles": styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted, "version": infotext.VERSION,
    }
    return json.dumps(data, ensure_ascii=False)


def png_info(image: Image.Image) -> dict[str, Any]:
    """/png-info's answer: the parameters text, the PNG's other text chunks, and the settings
    as `key: value` pairs (Prompt, Negative prompt, Steps, ..., Size-1, Size-2)."""
    items = {key: value for key, value in image.info.items()
             if isinstance(value, str) and key != "parameters"}
    # The studio's own reader: the PNG chunk, or the EXIF comment of a JPEG or WebP.
    text = read_infotext(image)
    if not isinstance(text, str):
        text = ""
    return {"info": text, "items": items, "parameters": infotext.fields(text) if text else {}}
