"""Turning the page's values into a job: validated settings, the pictures and files beside them.

Every value the browser (or an API client) sent is checked through GenerationParams, and every
adapter name against the models folder, with a gr.Error naming the field on failure: a remote
client can send anything, and a shared page must never open or name paths on the server.
`RequestBuilder` is a base of `Studio` (handlers.py), which turns its result into a JobRequest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageChops

from .. import images as imaging
from .. import params as P
from .. import prompts
from ..engine import (CHECKPOINTS_SUBDIR, CONTROLNET_SUBDIR, DETECTOR_SUBDIR, IP_ADAPTER_SUBDIR,
                      LORA_SUBDIR, AdapterError, InputError, Inputs, mask_to_l,
                      parse_prompt_loras)
from ..params import MODES
from . import uploads
from .fields import CONTROLNET_UNITS, EXTRAS, UNIT_KEYS, _fail, shown_folder

if TYPE_CHECKING:
    # Annotations only: importing the in-process engine loads torch, which the studio's
    # modules never do themselves (launch.py builds the engine).
    from ..engine import Engine

REFERENCE_NOTE = ("Reference image given, but no IP-Adapter model is picked (under Adapters): it "
                  "does not change the result.")


def _held(payload: dict, field: str) -> Path:
    """The file behind an upload payload gradio holds; anything else is refused with one
    message that says nothing about the path (see uploads.py)."""
    held = uploads.held_file(payload)
    if held is None:
        raise _fail(field, uploads.REFUSED)
    return held


def _size(value) -> int | None:
    if value in (None, "", 0, 0.0):
        return None
    return value


def _text(value, field: str) -> str:
    """A text box's value; anything but text (a client may send a number or a list) is
    refused naming the field, before the prompt parsers see it."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(field, f"{field} must be text (got {type(value).__name__})")
    return value


def _lora_rows(table) -> list[tuple[str, Any]]:
    """(name, weight) rows of the LoRA weight table, in any form it arrives: the page's payload
    ({"headers", "data"}), a list of rows, or {name: weight}."""
    if isinstance(table, dict) and "data" in table:
        table = table["data"]
    if isinstance(table, dict):
        return [(str(k), v) for k, v in table.items()]
    rows = []
    for row in table or []:
        if isinstance(row, (list, tuple)) and len(row) >= 2 and row[0] not in (None, ""):
            rows.append((str(row[0]), row[1]))
    return rows


class RequestBuilder:
    """The page's values as a job's settings and inputs, checked against one engine's models
    (`Studio` sets `engine`)."""

    engine: Engine

    # -- inputs ------------------------------------------------------------------------------
    def models(self) -> list[str]:
        names = self.engine.models()
        if self.engine.model and self.engine.model not in names:
            names.insert(0, self.engine.model)
        return names

    def model_choices(self, names: list[str] | None = None) -> list[tuple[str, str]]:
        """The picker's (label, name) pairs: the label adds the licence a model states, since
        commercial use depends on it; the values stay the plain names."""
        names = self.models() if names is None else names
        licences = {info.name: info.licence for info in self.engine.list_models()}
        return [(f"{name} · {licences[name]}" if licences.get(name) else name, name)
                for name in names]

    def _model(self, name) -> str:
        name = (name or "").strip() if isinstance(name, str) else name
        if not name:
            return self.engine.model
        known = self.models()
        if name not in known:
            # Only listed models: a shared page must not load arbitrary paths on the server.
            raise _fail("model", f"{name!r} is not one of this studio's models ("
                        f"{', '.join(known)}); put checkpoints in "
                        f"{shown_folder(self.engine, CHECKPOINTS_SUBDIR)} and press 🔄")
        return name

    def build_params(self, model, prompt, negative_prompt, strength, guidance_scale, steps, seed,
                     scheduler, width, height, resize_mode, batch_count, batch_size,
                     extras: dict | None = None, units: list[int] | None = None
                     ) -> P.GenerationParams:
        """Validated settings from the basic controls plus, optionally, the EXTRAS controls (as
        returned by `_extras`); `units` receives the page numbers of the enabled ControlNets."""
        values = dict(
            model=self._model(model), prompt=_text(prompt, "prompt"),
            negative_prompt=_text(negative_prompt, "negative_prompt"),
            strength=strength, guidance_scale=guidance_scale, steps=steps,
            seed=P.default("seed") if seed in (None, "") else seed, scheduler=scheduler,
            width=_size(width), height=_size(height), resize_mode=resize_mode,
            batch_count=batch_count, batch_size=batch_size,
        )
        units = units if units is not None else []
        if extras is not None:
            self._check_prompt_loras(values["prompt"])
            values.update(
                loras=self._lora_list(extras["loras"], extras["lora_weights"]),
                ip_adapter=self._adapter_location(IP_ADAPTER_SUBDIR, extras["ip_adapter"],
                                                  "ip_adapter", hub=True),
                controlnets=self._controlnet_units(extras, units),
                **{name: extras[name] for name in (
                    "ip_adapter_scale", "pag_scale", "draft", "attention_slicing", "vae_tiling",
                    "cpu_offload", "output_type", "mask_blur", "inpaint_area", "inpaint_padding",
                    "masked_content", "color_correction")},
            )
        try:
            params = P.make(**values)
        except P.ParamsError as exc:
            raise _fail(exc.field, str(exc), units) from None
        for n, unit in zip(units, params.controlnets):
            if unit.start >= unit.end:
                raise _fail(f"cn{n}_start", f"the starting step ({unit.start:g}) must come before "
                            f"the ending step ({unit.end:g})")
        return params

    # -- adapters ----------------------------------------------------------------------------
    def available_loras(self) -> list[str]:
        """LoRA names (paths under models/Lora without .safetensors), sorted."""
        return self.engine.list_loras()

    def adapter_models(self, kind: str) -> list[str]:
        """Names under models/<kind> (IP-Adapter or ControlNet), sorted."""
        if kind == IP_ADAPTER_SUBDIR:
            return self.engine.list_ip_adapters()
        return self.engine.list_controlnets()

    def detector_models(self) -> list[tuple[str, str]]:
        """(label, name) of the depth and pose detectors in models/ControlNet-preprocessors,
        after the automatic choice."""
        found = self.engine.list_detectors()
        return [("auto (the first of its kind)", "")] + [
            (f"{name} ({kind})", name) for name, kind in found.items()]

    def _detector_name(self, value, field: str) -> str:
        """A detector picked from the list (a shared page must not name server paths)."""
        if value is not None and not isinstance(value, str):
            raise _fail(field, f"must be text (got {type(value).__name__})")
        value = (value or "").strip()
        found = self.engine.list_detectors()
        if value and value not in found:
            listed = ", ".join(found) or "none yet"
            raise _fail(field, f"{value!r} is not one of this studio's detector models "
                        f"({listed}); put its folder in {shown_folder(self.engine, DETECTOR_SUBDIR)} and "
                        "press 🔄")
        return value

    def _adapter_location(self, kind: str, value, field: str, hub: bool = False) -> str:
        """The name (or hub id) the engine gets for what the artist picked or typed.

        Only names listed under models/<kind>, paths inside that folder (given back as names,
        so infotext and presets hold no server paths) and (for the IP-Adapter) hub ids pass: a
        shared page must not read arbitrary paths on the server. The engine's path policy
        decides (Engine.check_adapter); this names the page's field.
        """
        if value is not None and not isinstance(value, str):
            raise _fail(field, f"must be text (got {type(value).__name__})")
        try:
            return self.engine.check_adapter(kind, value or "", field, hub=hub)
        except InputError as exc:
            raise _fail(field, self._unplaced(str(exc)) + " and press 🔄") from None

    def _adapter_choice(self, kind: str, location: str) -> str | None:
        """The inverse of _adapter_location for a value read back from a PNG: the listed name,
        the hub id, or None when it is not available here."""
        try:
            return self.engine.check_adapter(kind, location, kind, hub=kind == IP_ADAPTER_SUBDIR)
        except InputError:
            pass
        # A file name from another machine's folder: the same name here, if listed.
        name = Path(location).name
        return name if name in self.adapter_models(kind) else None

    def _check_prompt_loras(self, prompt: str) -> None:
        """<lora:...> tags must name LoRAs by name: the engine would also open a file path."""
        try:
            clean, tags = parse_prompt_loras(prompt)
            prompts.parse(clean)
        except (AdapterError, prompts.PromptSyntaxError) as exc:
            raise _fail("prompt", str(exc)) from None
        for name, _ in tags:
            if Path(name).expanduser().is_absolute() or ".." in Path(name).parts:
                raise _fail("prompt", f"<lora:{name}> names a file path; LoRAs are picked by "
                            f"name from {shown_folder(self.engine, LORA_SUBDIR)}")

    def _lora_list(self, names, table) -> list[dict]:
        if names in (None, ""):
            return []
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple)):
            raise _fail("loras", f"must be a list of LoRA names (got {type(names).__name__})")
        known = self.available_loras()
        weights = dict(_lora_rows(table))
        loras = []
        for name in names:
            if name not in known:
                listed = ", ".join(known) or "none yet"
                raise _fail("loras", f"{name!r} is not in "
                            f"{shown_folder(self.engine, LORA_SUBDIR)} (available: "
                            f"{listed}); put the .safetensors file there and press 🔄")
            weight = weights.get(name, 1.0)
            loras.append({"name": name, "weight": 1.0 if weight in (None, "") else weight})
        return loras

    def _controlnet_units(self, extras: dict, units: list[int]) -> list[dict]:
        """The enabled units as ControlNetUnit values; their page numbers go into `units`."""
        found = []
        for n in range(1, CONTROLNET_UNITS + 1):
            get = (lambda key, n=n: extras[f"cn{n}_{key}"])
            if get("enabled") not in (True, 1, "true", "True"):
                continue
            if not (get("model") or "").strip():
                raise _fail(f"cn{n}_model", "pick a ControlNet model (folders and files in "
                            f"{shown_folder(self.engine, CONTROLNET_SUBDIR)}), or untick "
                            "the unit")
            unit = {key: get(key) for key in UNIT_KEYS if key not in ("enabled", "image")}
            unit["model"] = self._adapter_location(CONTROLNET_SUBDIR, unit["model"],
                                                   f"cn{n}_model")
            unit["detector"] = self._detector_name(unit["detector"], f"cn{n}_detector")
            if unit["source"] == "upload" and get("image") is None:
                raise _fail(f"cn{n}_image", "no control image uploaded (or set the unit's source "
                            "to the init image)")
            units.append(n)
            found.append(unit)
        return found

    def _extras(self, extras: dict) -> dict:
        unknown = sorted(set(extras) - set(EXTRAS))
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        return {**EXTRAS, **extras}

    def _inputs(self, params: P.GenerationParams, extras: dict, units: list[int],
                reference_image, notes: list[str]) -> Inputs:
        """The pictures and files of a job beside its settings (mask, reference, control
        images, latents), each checked and named on failure."""
        inputs = Inputs()
        if reference_image is not None:
            inputs.ip_image = self.load_image(reference_image, "reference_image")
            if not params.ip_adapter:
                notes.append(REFERENCE_NOTE)
        if extras["mode"] == "inpaint":
            inputs.mask = self.mask_from(extras["mask"], extras["mask_image"])
        images = []
        for n in units:
            image = extras[f"cn{n}_image"]
            upload = extras[f"cn{n}_source"] == "upload"
            images.append(self.load_image(image, f"cn{n}_image") if upload else None)
        inputs.control_images = images or None
        if extras["latents"] is not None:
            inputs.latents = self._file(extras["latents"], "latents", ".safetensors")
        return inputs

    def _request(self, init_image, reference_image, basic: tuple, extras: dict, notes: list[str]
                 ) -> tuple[P.GenerationParams, Any, Inputs]:
        """(settings, init image, inputs) of a job from everything the page sent."""
        extras = self._extras(extras)
        mode = extras["mode"]
        if mode not in MODES:
            raise _fail("mode", f"mode must be one of: {', '.join(MODES)} (got {mode!r})")
        units: list[int] = []
        params = self.build_params(*basic, extras=extras, units=units)
        editor = extras["mask"] if isinstance(extras["mask"], dict) else {}
        if init_image is None and mode == "inpaint" and editor.get("background") is not None:
            # A picture dropped straight into the mask editor is the one to inpaint.
            init_image = editor["background"]
        if init_image is None and extras["latents"] is not None and mode == "img2img":
            init = None  # the latents fix the size and the content
        else:
            init = self.load_image(init_image, "init_image")
        return params, init, self._inputs(params, extras, units, reference_image, notes)

    @staticmethod
    def _file(source, field: str, suffix: str) -> Path:
        """An uploaded file's path: a gradio payload for a file gradio holds (see uploads.py) or
        a Path from in-process code; anything else is refused without a word about the path."""
        if isinstance(source, dict):
            source = _held(source, field)
        if not isinstance(source, Path):
            raise _fail(field, "send the file as a file (gradio_client.handle_file), not as text")
        if source.suffix.lower() != suffix:
            raise _fail(field, f"{source.name} is not a {suffix} file")
        return source

    def mask_from(self, editor, upload) -> Image.Image:
        """The inpaint mask (L, 255 = repaint): every stroke painted in the mask editor, in any
        colour, together with an uploaded mask (white = repaint, or its opaque part)."""
        painted = None
        # The editor sends {background, layers, composite}; a lone picture counts as one layer.
        layers = editor.get("layers") if isinstance(editor, dict) else [editor]
        for layer in [layer for layer in layers or [] if layer is not None]:
            image = self.load_image(layer, "mask", keep_alpha=True)
            alpha = image.getchannel("A") if image.mode == "RGBA" else image.convert("L")
            # Any touch of the brush counts, however faint its edge or colour.
            alpha = alpha.point(lambda a: 255 if a else 0)
            if painted is None:
                painted = alpha
            else:
                painted = ImageChops.lighter(painted, alpha.resize(painted.size))
        if painted is not None and painted.getextrema()[1] == 0:
            painted = None  # an untouched layer is no mask
        uploaded = None
        if upload is not None:
            uploaded = mask_to_l(self.load_image(upload, "mask_image", keep_alpha=True))
        if painted is None and uploaded is None:
            raise _fail("mask", "nothing is painted: paint over the area to repaint (any "
                        "colour) in the Inpaint tab, or upload a mask (white = repaint)")
        if painted is None:
            return uploaded
        if uploaded is not None:
            painted = ImageChops.lighter(painted, uploaded.resize(painted.size))
        return painted

    @staticmethod
    def load_image(source, field: str = "init_image", keep_alpha: bool = False) -> Image.Image:
        """An RGB image (RGBA with keep_alpha) from what the browser or a test sent: a PIL
        image, an array, the payload of a file gradio holds (see uploads.py) or a Path from
        in-process code. A payload naming any other file is refused with one message, whatever
        the file is, so a client can neither read nor probe server paths."""
        if isinstance(source, dict):
            source = _held(source, field)
        elif isinstance(source, str):
            # A bare string from the API would be a path on the server: never open those.
            raise _fail(field, "send the image as a file (gradio_client.handle_file), not as text")
        elif type(source).__name__ == "ndarray":
            source = Image.fromarray(source)
        if source is None:
            what = "upload a picture to transform" if field == "init_image" else "upload an image"
            raise _fail(field, f"no image given: {what}")
        if not isinstance(source, (Image.Image, Path)):
            raise _fail(field, f"must be an image file (got {type(source).__name__})")
        try:
            return imaging.load_image(source, field, keep_alpha=keep_alpha)
        except InputError as exc:
            raise _fail(exc.field, str(exc)) from None

    def _unplaced(self, text: str) -> str:
        """`text` with the models and outputs folders' full paths shortened to their names:
        the engine's messages may name the files it read, the page must not show where the
        server keeps them."""
        for folder in (self.engine.models_dir, self.engine.outputs_dir):
            for form in {str(folder.resolve()), str(folder.absolute())}:
                text = text.replace(form, folder.name)
        return text
