"""The studio's adapter controls: the Inpaint sub-tab, and the Adapters (LoRA, IP-Adapter, PAG),
ControlNet, Memory and Advanced accordions.

Each builder places its controls where it is called (inside app.py's layout) and records them in
a Panel under the keyword names of handlers.EXTRAS, which app.py hands to the GPU events as
`inputs_kwargs`; `wire` connects the small helpers (LoRA weight rows, rescans, edge previews, the
mask editor's background). Ranges, defaults and help texts come from params.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import gradio as gr

from .. import params as P
from . import handlers
from ..engine import DETECTOR_SUBDIR
from .handlers import CONTROLNET_SUBDIR, CONTROLNET_UNITS, IP_ADAPTER_SUBDIR, Studio


def _info(name: str, model=None) -> str:
    return (model or P.GenerationParams).model_fields[name].description or ""


def _slider(name: str, label: str, step: float, elem_id: str, model=None, **kwargs) -> gr.Slider:
    lo, hi = P.field_range(name, model)
    value = (P.default(name) if model is None else model.model_fields[name].default)
    return gr.Slider(minimum=lo, maximum=hi, value=value, step=step, label=label,
                     info=_info(name, model), elem_id=elem_id, **kwargs)


def _radio(name: str, label: str, elem_id: str, model=None, **kwargs) -> gr.Radio:
    value = P.default(name) if model is None else model.model_fields[name].default
    return gr.Radio(list(P.choices(name, model)), value=value, label=label,
                    info=_info(name, model), elem_id=elem_id, **kwargs)


@dataclass
class Panel:
    """The adapter controls: `extras` maps handlers.EXTRAS names to components; the rest are
    the helper buttons and outputs that `wire` connects."""

    extras: dict = field(default_factory=dict)
    reference: gr.Image | None = None
    refresh: gr.Button | None = None
    refresh_controlnets: gr.Button | None = None
    previews: list = field(default_factory=list)  # (button, control map) per ControlNet unit
    clear_mask: gr.Button | None = None

    def __getitem__(self, name: str):
        return self.extras[name]


def mode_selector(panel: Panel) -> gr.Radio:
    """The job's mode, set by the img2img / Inpaint sub-tabs (hidden: the tabs are the switch,
    this carries their choice to Generate and to API clients)."""
    panel.extras["mode"] = gr.Radio(list(handlers.MODES), value="img2img", label="Mode",
                                    visible=False, elem_id="mode")
    return panel.extras["mode"]


def inpaint_controls(panel: Panel) -> None:
    """The Inpaint sub-tab's contents: the mask editor, a mask upload and the inpaint options."""
    e = panel.extras
    gr.Markdown("Paint over what should be repainted (any colour counts); the init image is the "
                "background. Generate then repaints only there, with all the settings on the "
                "right.", elem_id="inpaint-help")
    e["mask"] = gr.ImageEditor(
        label="Mask: paint what to repaint", type="pil", image_mode="RGBA", format="png",
        sources=["upload", "clipboard"], height=360, transforms=[], layers=False,
        # Half-opaque strokes: the picture shows through what is painted (any alpha counts as
        # mask, see Studio.mask_from).
        brush=gr.Brush(colors=[("#ffffff", 0.5), ("#ff3b30", 0.5), ("#34c759", 0.5)],
                       default_color=("#ffffff", 0.5), color_mode="defaults"),
        eraser=gr.Eraser(), elem_id="mask-editor")
    # The editor's own clear would empty the picture too (its button is hidden by the page's
    # CSS): this one drops the strokes and keeps the init image.
    panel.clear_mask = gr.Button("Clear mask", size="sm", elem_id="clear-mask")
    e["mask_image"] = gr.Image(
        label="…or upload a mask (white = repaint; added to what is painted)", type="pil",
        image_mode=None, sources=["upload", "clipboard"], format="png", height=180,
        elem_id="mask-upload")
    with gr.Row(elem_id="inpaint-row"):
        e["mask_blur"] = _slider("mask_blur", "Mask blur", 1, "mask-blur")
        e["inpaint_padding"] = _slider("inpaint_padding", "Only masked padding, pixels", 1,
                                       "inpaint-padding")
    with gr.Row(elem_id="inpaint-options-row"):
        e["inpaint_area"] = _radio("inpaint_area", "Inpaint area", "inpaint-area")
        e["masked_content"] = _radio("masked_content", "Masked content", "masked-content")


def adapters_accordion(studio: Studio, panel: Panel) -> None:
    """LoRAs with their weights, the IP-Adapter with its reference image, and PAG."""
    e = panel.extras
    with gr.Accordion("Adapters", open=False, elem_id="adapters-accordion"):
        with gr.Row(elem_id="lora-row"):
            most = next(m.max_length for m in P.GenerationParams.model_fields["loras"].metadata
                        if hasattr(m, "max_length"))
            e["loras"] = gr.Dropdown(
                studio.available_loras(), value=[], multiselect=True, max_choices=most,
                label="LoRAs", scale=5,
                info="From the LoRA folder (models/Lora); 🔄 rescans it. <lora:name:weight> in "
                "the prompt works too.", elem_id="loras")
            panel.refresh = gr.Button("🔄", scale=0, elem_id="refresh-adapters")
        e["lora_weights"] = gr.Dataframe(
            value={"headers": handlers.LORA_HEADERS, "data": []},
            headers=handlers.LORA_HEADERS, datatype=["str", "number"], type="array",
            column_count=2, static_columns=[0], interactive=True, visible=False,
            label="LoRA weights (0 = no effect, 1 = as trained, {} to {})".format(
                *(P._num(v) for v in P.field_range("weight", P.LoraWeight))),
            elem_id="lora-weights")
        with gr.Row(elem_id="ip-adapter-row"):
            panel.reference = gr.Image(
                label="Reference image (IP-Adapter)", type="pil", format="png",
                sources=["upload", "clipboard"], height=200, elem_id="reference-image")
            with gr.Column(elem_id="ip-adapter-side"):
                e["ip_adapter"] = gr.Dropdown(
                    studio.adapter_models(IP_ADAPTER_SUBDIR), value="", allow_custom_value=True,
                    label="IP-Adapter model",
                    info=f"Folders in models/{IP_ADAPTER_SUBDIR} (with models/image_encoder), or "
                    "a hub id. It applies when a reference image is given.",
                    elem_id="ip-adapter")
                e["ip_adapter_scale"] = _slider("ip_adapter_scale", "IP-Adapter scale", 0.05,
                                                "ip-adapter-scale")
        e["pag_scale"] = _slider("pag_scale", "PAG scale", 0.1, "pag-scale")
        e["draft"] = _slider("draft", "Draft (lossy, faster)", 1, "draft")


def controlnet_accordion(studio: Studio, panel: Panel) -> None:
    """Up to three ControlNet units, each with its model, control picture and schedule."""
    e = panel.extras
    unit = P.ControlNetUnit
    models = studio.adapter_models(CONTROLNET_SUBDIR)
    detectors = studio.detector_models()
    with gr.Accordion("ControlNet", open=False, elem_id="controlnet-accordion"):
        with gr.Row(elem_id="controlnet-help-row"):
            gr.Markdown(f"Models in models/{CONTROLNET_SUBDIR}; the units act together. Depth "
                        f"and pose maps are drawn by detector models in models/{DETECTOR_SUBDIR}"
                        " (transformers folders: a depth-estimation model, a ViTPose model).",
                        elem_id="controlnet-help")
            panel.refresh_controlnets = gr.Button("🔄", scale=0, elem_id="refresh-controlnets")
        with gr.Tabs(elem_id="controlnet-tabs"):
            for n in range(1, CONTROLNET_UNITS + 1):
                with gr.Tab(f"Unit {n}", id=f"cn{n}", elem_id=f"cn{n}-tab"):
                    with gr.Row(elem_id=f"cn{n}-model-row"):
                        e[f"cn{n}_enabled"] = gr.Checkbox(False, label="Enable", scale=1,
                                                          elem_id=f"cn{n}-enabled")
                        e[f"cn{n}_model"] = gr.Dropdown(
                            models, value="", allow_custom_value=True, label="Model", scale=4,
                            info=_info("model", unit), elem_id=f"cn{n}-model")
                    with gr.Row(elem_id=f"cn{n}-source-row"):
                        e[f"cn{n}_source"] = _radio("source", "Source", f"cn{n}-source", unit)
                        e[f"cn{n}_preprocessor"] = _radio("preprocessor", "Preprocessor",
                                                          f"cn{n}-preprocessor", unit)
                    e[f"cn{n}_detector"] = gr.Dropdown(
                        detectors, value="", label="Detector model (depth / pose)",
                        info=_info("detector", unit), elem_id=f"cn{n}-detector")
                    e[f"cn{n}_image"] = gr.Image(
                        label="Control image (source: upload)", type="pil", format="png",
                        sources=["upload", "clipboard"], height=200, elem_id=f"cn{n}-image")
                    e[f"cn{n}_scale"] = _slider("scale", "Control weight", 0.05,
                                                f"cn{n}-scale", unit)
                    with gr.Row(elem_id=f"cn{n}-steps-row"):
                        e[f"cn{n}_start"] = _slider("start", "Starting step", 0.01,
                                                    f"cn{n}-start", unit)
                        e[f"cn{n}_end"] = _slider("end", "Ending step", 0.01, f"cn{n}-end", unit)
                    with gr.Row(elem_id=f"cn{n}-canny-row"):
                        e[f"cn{n}_low"] = _slider("low", "Canny low", 1, f"cn{n}-low", unit)
                        e[f"cn{n}_high"] = _slider("high", "Canny high", 1, f"cn{n}-high", unit)
                    with gr.Row(elem_id=f"cn{n}-preview-row"):
                        button = gr.Button("Preview control map", size="sm", scale=0,
                                           elem_id=f"cn{n}-preview")
                        preview = gr.Image(label="Control map (what the ControlNet follows)",
                                           interactive=False, height=160, format="png",
                                           elem_id=f"cn{n}-control-map")
                    panel.previews.append((button, preview))


def memory_accordion(panel: Panel) -> None:
    e = panel.extras
    with gr.Accordion("Memory", open=False, elem_id="memory-accordion"):
        with gr.Row(elem_id="memory-row"):
            e["attention_slicing"] = _radio("attention_slicing", "Attention slicing",
                                            "attention-slicing")
            e["vae_tiling"] = _radio("vae_tiling", "VAE tiling", "vae-tiling")
            e["cpu_offload"] = _radio("cpu_offload", "CPU offload", "cpu-offload")


def advanced_accordion(panel: Panel) -> None:
    e = panel.extras
    with gr.Accordion("Advanced", open=False, elem_id="advanced-accordion"):
        e["output_type"] = gr.Radio([("Image", "image"), ("Latent", "latent")],
                                    value=P.default("output_type"), label="Output type",
                                    info=_info("output_type"), elem_id="output-type")
        e["latents"] = gr.File(
            label="Latent input (.safetensors saved with output type Latent)",
            file_types=[".safetensors"], height=120, elem_id="latent-input")


def wire(studio: Studio, panel: Panel, init_image: gr.Image, tabs: tuple[gr.Tab, gr.Tab],
         instant: dict, toasting: dict) -> None:
    """The panel's helper events. `tabs`: the img2img and Inpaint sub-tabs, which set the mode."""
    e = panel.extras
    img2img_tab, inpaint_tab = tabs
    img2img_tab.select(lambda: "img2img", None, [e["mode"]], api_name="mode_img2img", **instant)
    inpaint_tab.select(lambda: "inpaint", None, [e["mode"]], api_name="mode_inpaint", **instant)
    # Raw payload in: a picture gradio cannot read must not raise here, Generate names it.
    init_image.change(studio.mask_background, [init_image], [e["mask"]],
                      api_name="mask_background", preprocess=False, **instant)
    if panel.clear_mask is not None:
        panel.clear_mask.click(studio.mask_background, [init_image], [e["mask"]],
                               api_name="clear_mask", preprocess=False, **instant)
    e["loras"].change(studio.lora_table, [e["loras"], e["lora_weights"]], [e["lora_weights"]],
                      api_name="lora_table", **instant)
    controlnet_models = [e[f"cn{n}_model"] for n in range(1, CONTROLNET_UNITS + 1)]
    detectors = [e[f"cn{n}_detector"] for n in range(1, CONTROLNET_UNITS + 1)]
    adapter_lists = [e["loras"], e["ip_adapter"], *controlnet_models, *detectors]
    panel.refresh.click(studio.refresh_adapters, adapter_lists, adapter_lists,
                        api_name="refresh_adapters", **instant)
    panel.refresh_controlnets.click(studio.refresh_adapters, adapter_lists, adapter_lists,
                                    api_name="refresh_controlnets", **instant)
    for n, (button, preview) in enumerate(panel.previews, 1):
        button.click(functools.partial(studio.preview_control, unit=n),
                     [e[f"cn{n}_image"], e[f"cn{n}_source"], init_image,
                      e[f"cn{n}_preprocessor"], e[f"cn{n}_detector"], e[f"cn{n}_low"],
                      e[f"cn{n}_high"]], [preview], api_name=f"controlnet{n}_preview",
                     # Raw payloads: the handler opens only pictures gradio received (uploads.py).
                     preprocess=False, **toasting)
