"""The studio's adapter controls through its handlers (no browser): LoRA picker and weights,
IP-Adapter, inpainting with the mask editor or an uploaded mask, ControlNet units and edge
previews, latent output and input, PNG Info filling the new controls, the X/Y plot with adapters,
and the errors for bad adapter files and inputs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui import infotext
from webui.engine.core import Engine
from webui.tiny import build_pipeline
from webui.ui import handlers
from webui.ui.handlers import Session, Studio

from serving import served
from tests.support.tiny_adapters import (make_controlnet, make_depth_detector, make_ip_adapter,
                                         make_lora, make_pose_detector)

# gr.Warning outside a request falls back to a Python warning; the handlers use it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")
# Fast runs: few steps and no PAG (it doubles the UNet calls) unless a test asks for it.
FAST = dict(steps=4, strength=0.5, seed=11, pag_scale=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with a tiny LoRA, a damaged one, one for the other model family, an
    IP-Adapter (and one without its image encoder) and a ControlNet."""
    root = tmp_path_factory.mktemp("adapter-studio") / "models"
    pipe = build_pipeline("tiny-random")
    lora = root / "Lora"
    make_lora(pipe, lora / "film.safetensors", seed=1)
    make_lora(pipe, lora / "styles" / "grain.safetensors", fmt="kohya", seed=2)
    make_lora(build_pipeline("tiny-random-xl"), lora / "for-xl.safetensors", seed=3)
    (lora / "broken.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    make_ip_adapter(pipe, root / "IP-Adapter" / "tiny-ip", seed=4)
    make_ip_adapter(pipe, root / "IP-Adapter" / "no-encoder", seed=5, image_encoder=False)
    make_controlnet(pipe, root / "ControlNet" / "tiny-canny", seed=6)
    make_depth_detector(root / "ControlNet-preprocessors" / "tiny-depth", seed=7)
    make_pose_detector(root / "ControlNet-preprocessors" / "tiny-pose", seed=8)
    return root


@pytest.fixture(scope="module")
def studio(models):
    engine = Engine(models_dir=models, outputs_dir=models.parent / "outputs", device="cpu",
                    model="tiny-random")
    yield Studio(engine)
    engine.cancel_all()
    engine.unload()


def picture(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.RandomState(seed)
    image = Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                                    fill=(250, 250, 250))
    return image


def strokes(size: int = 64, box=(0, 0, 31, 63), colour=(255, 0, 0, 255)) -> Image.Image:
    """A brush layer as the mask editor sends it: transparent, with a painted area."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=colour)
    return layer


def run(studio, init, session=None, **settings):
    values = {**FAST, **settings}
    return list(studio.generate(session or Session(), init, **values))[-1]


def pixels(view) -> np.ndarray:
    return np.asarray(view.gallery[0][0], dtype=np.int16)


def error_of(call) -> str:
    with pytest.raises(gr.Error) as caught:
        call()
    return caught.value.message


# -- lists and locations -------------------------------------------------------------------------
def test_adapter_lists_and_refresh(studio):
    assert studio.available_loras() == ["broken", "film", "for-xl", "styles/grain"]
    assert studio.adapter_models("IP-Adapter") == ["no-encoder", "tiny-ip"]
    assert studio.adapter_models("ControlNet") == ["tiny-canny"]
    loras, ip, *units = studio.refresh_adapters(["film", "gone"], "h94/IP-Adapter", "", None, "x",
                                                "tiny-pose", "gone", None)
    assert loras["value"] == ["film"] and "styles/grain" in loras["choices"]
    assert ip["value"] == "h94/IP-Adapter" and ip["choices"] == ["no-encoder", "tiny-ip"]
    models, detectors = units[:3], units[3:]
    assert [u["value"] for u in models] == ["", "", "x"] and models[0]["choices"] == ["tiny-canny"]
    # Detectors: the automatic choice, then each with its kind; a vanished one falls back.
    assert [u["value"] for u in detectors] == ["tiny-pose", "", ""]
    assert [value for _, value in detectors[0]["choices"]] == ["", "tiny-depth", "tiny-pose"]


def test_adapter_locations_stay_inside_the_models_folder(studio, models):
    where = studio._adapter_location
    # Names relative to their folder go into the settings (and so into infotext and presets).
    assert where("IP-Adapter", "tiny-ip", "ip_adapter", hub=True) == "tiny-ip"
    assert where("IP-Adapter", "h94/IP-Adapter", "ip_adapter", hub=True) == "h94/IP-Adapter"
    inside = str(models / "ControlNet" / "tiny-canny")
    assert where("ControlNet", inside, "cn1_model") == "tiny-canny"
    for bad in ("/etc", "../../etc", "a/..", str(models.parent), str(models / "Lora")):
        with pytest.raises(gr.Error, match="not one of this studio's IP-Adapter models"):
            where("IP-Adapter", bad, "ip_adapter", hub=True)
    # ControlNets are only local.
    assert "ControlNet unit 2 model" in error_of(lambda: where("ControlNet", "h94/x", "cn2_model"))


# -- LoRA ----------------------------------------------------------------------------------------
def test_lora_table_keeps_weights_by_name():
    table = handlers.Studio.lora_table(["film"], None)
    assert table["value"]["data"] == [["film", 1.0]] and table["visible"] is True
    kept = handlers.Studio.lora_table(["styles/grain", "film"], [["film", 0.4]])
    assert kept["value"]["data"] == [["styles/grain", 1.0], ["film", 0.4]]
    assert handlers.Studio.lora_table([], [["film", 0.4]])["visible"] is False


def test_lora_run_changes_the_result_and_matches_the_prompt_syntax(studio):
    init = picture(1)
    plain = run(studio, init)
    picked = run(studio, init, prompt="a cat", loras=["film"],
                 lora_weights={"headers": handlers.LORA_HEADERS, "data": [["film", 0.8]]})
    assert np.abs(pixels(picked) - pixels(run(studio, init, prompt="a cat"))).max() > 0
    assert 'LoRAs: "film:0.8"' in picked.infotext or "LoRAs: film:0.8" in picked.infotext
    # The tag is taken out of the prompt, so the text encoder sees the same "a cat".
    tagged = run(studio, init, prompt="a cat <lora:film:0.8>")
    assert np.array_equal(pixels(tagged), pixels(picked))
    # A LoRA in a subfolder, weight table given as rows; then none again gives the plain result.
    assert run(studio, init, loras=["styles/grain"], lora_weights=[["styles/grain", 0.5]]).gallery
    assert np.array_equal(pixels(run(studio, init)), pixels(plain))


def test_bad_loras_are_clear_errors_and_the_studio_keeps_working(studio):
    init = picture(2)
    damaged = error_of(lambda: run(studio, init, loras=["broken"]))
    assert damaged.startswith("LoRA: broken.safetensors is damaged"), damaged
    wrong = error_of(lambda: run(studio, init, loras=["for-xl"]))
    assert wrong.startswith("LoRA: ") and "for-xl" in wrong, wrong
    weight = error_of(lambda: run(studio, init, loras=["film"], lora_weights=[["film", 9]]))
    assert weight.startswith("LoRA 1 weight: loras[0].weight must be a number from -4 to 4"), \
        weight
    unknown = error_of(lambda: run(studio, init, loras=["nope"]))
    assert unknown.startswith("LoRAs: 'nope' is not in") and "film" in unknown
    path = error_of(lambda: run(studio, init, prompt="<lora:/etc/passwd:1>"))
    assert path.startswith("Prompt: <lora:/etc/passwd> names a file path"), path
    syntax = error_of(lambda: run(studio, init, prompt="<lora:film:lots>"))
    assert syntax.startswith("Prompt: ") and "must be a number" in syntax
    assert "**Done**" in run(studio, init, loras=["film"]).status


# -- IP-Adapter ----------------------------------------------------------------------------------
def test_ip_adapter_needs_model_and_reference(studio):
    init = picture(3)
    plain = run(studio, init)
    noted = run(studio, init, reference_image=picture(9))
    assert handlers.REFERENCE_NOTE in noted.status
    alone = run(studio, init, ip_adapter="tiny-ip")
    assert "IP-Adapter not applied: no reference image" in alone.status
    assert np.array_equal(pixels(alone), pixels(plain))
    steered = run(studio, init, ip_adapter="tiny-ip", ip_adapter_scale=1.0,
                  reference_image=picture(9))
    assert np.abs(pixels(steered) - pixels(plain)).max() > 0
    assert "IP-Adapter scale: 1" in steered.infotext
    missing = error_of(lambda: run(studio, init, ip_adapter="no-encoder",
                                   reference_image=picture(9)))
    assert missing.startswith("IP-Adapter: ") and "no image encoder" in missing, missing
    scale = error_of(lambda: run(studio, init, ip_adapter="tiny-ip", ip_adapter_scale=2))
    assert scale.startswith("IP-Adapter scale must be a number from 0 to 1"), scale
    assert "**Done**" in run(studio, init).status


# -- inpaint -------------------------------------------------------------------------------------
def test_inpaint_with_painted_strokes_keeps_the_rest(studio):
    init = picture(4)
    editor = {"background": init, "layers": [strokes()], "composite": init}
    view = run(studio, init, mode="inpaint", mask=editor, strength=0.9, mask_blur=0,
               inpaint_area="only masked", inpaint_padding=8, pag_scale=3)
    assert "Inpainted" in view.status and "PAG was off" not in view.status
    assert "PAG scale: 3" in view.infotext
    out, before = pixels(view), np.asarray(init, dtype=np.int16)
    assert np.abs(out[:, 40:] - before[:, 40:]).max() <= 2
    assert np.abs(out[:, :24] - before[:, :24]).max() > 10
    for text in ("Inpaint area: Only masked", "Mask blur: 0", "Masked area padding: 8"):
        assert text in view.infotext
    # The same settings in img2img mode ignore the mask.
    assert "Inpaint area" not in run(studio, init, mask=editor).infotext


def test_inpaint_mask_sources_sizes_and_empty_masks(studio):
    init = picture(5)
    # A mask upload of another size, with no picture of its own in the editor: resized.
    big = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(big).rectangle((0, 0, 63, 127), fill=255)
    view = run(studio, None, mode="inpaint", mask={"background": init, "layers": []},
               mask_image=big, masked_content="fill")
    assert view.gallery[0][0].size == (64, 64) and "Masked content: fill" in view.infotext
    # Painted strokes and an upload add up.
    both = studio.mask_from({"layers": [strokes(box=(0, 0, 9, 9))]}, strokes(box=(50, 50, 63, 63),
                                                                             colour=(0,) * 4))
    assert both.getpixel((5, 5)) == 255 and both.getpixel((30, 30)) == 0
    # An API client may send a plain mask picture instead of the editor's layers.
    plain = Image.new("L", (64, 64), 0)
    plain.paste(255, (0, 0, 8, 8))
    assert studio.mask_from(plain, None).getbbox() == (0, 0, 8, 8)
    nothing = error_of(lambda: run(studio, init, mode="inpaint",
                                   mask={"layers": [strokes(colour=(0, 0, 0, 0))]}))
    assert nothing.startswith("Mask: nothing is painted"), nothing
    black = error_of(lambda: run(studio, init, mode="inpaint", mask_image=Image.new("L", (64, 64))))
    assert black.startswith("Mask: the mask is empty"), black
    mode = error_of(lambda: run(studio, init, mode="outpaint"))
    assert mode.startswith("Mode must be one of: img2img, inpaint"), mode
    assert studio.mask_background(None)["__type__"] == "update"
    assert studio.mask_background(init)["background"].size == (64, 64)


# -- ControlNet ----------------------------------------------------------------------------------
def unit(n: int = 1, **settings) -> dict:
    values = {"enabled": True, "model": "tiny-canny", "source": "init image",
              "preprocessor": "canny", "scale": 1.0, "start": 0.0, "end": 1.0, "low": 50,
              "high": 120, **settings}
    return {f"cn{n}_{key}": value for key, value in values.items()}


def test_controlnet_units_run_and_name_their_unit(studio):
    init = picture(6)
    plain = run(studio, init)
    guided = run(studio, init, **unit(1))
    assert "ControlNet 0" in guided.infotext and "tiny-canny" in guided.infotext
    assert np.abs(pixels(guided) - pixels(plain)).max() > 0
    # Unit 2 alone, from an uploaded picture; errors name unit 2, not the first setting.
    assert run(studio, init, **unit(2, source="upload", image=picture(7))).gallery
    missing = error_of(lambda: run(studio, init, **unit(2, source="upload")))
    assert missing.startswith("ControlNet unit 2 image: no control image uploaded"), missing
    scale = error_of(lambda: run(studio, init, **unit(2, scale=5)))
    assert scale.startswith("ControlNet unit 2 scale: controlnets[0].scale must be"), scale
    nomodel = error_of(lambda: run(studio, init, **unit(3, model="")))
    assert nomodel.startswith("ControlNet unit 3 model: pick a ControlNet model"), nomodel
    ends = error_of(lambda: run(studio, init, **unit(1, start=0.6, end=0.5)))
    assert ends.startswith("ControlNet unit 1 start: the starting step (0.6) must come before"), \
        ends
    # A unit that is not enabled is ignored whatever it holds.
    assert run(studio, init, **unit(1, enabled=False, model="")).gallery


def test_preview_control(studio):
    init = picture(8)
    edges = studio.preview_control(None, "init image", init, "canny", "", 50, 120, unit=1)
    assert edges.size == (64, 64) and edges.getextrema()[0][1] == 255
    assert studio.preview_control(picture(9), "upload", None, "canny", "", 50, 120,
                                  unit=2).size == (64, 64)
    assert np.array_equal(np.asarray(studio.preview_control(None, "init image", init, "none")),
                          np.asarray(init))
    depth = np.asarray(studio.preview_control(None, "init image", init, "depth", "", unit=1))
    assert depth.shape == (64, 64, 3) and (depth[..., 0] == depth[..., 2]).all()
    pose = studio.preview_control(None, "init image", init, "pose", "tiny-pose", unit=1)
    assert pose.size == (64, 64) and np.asarray(pose).any()
    assert error_of(lambda: studio.preview_control(None, "upload", init, unit=2)) \
        .startswith("ControlNet unit 2 image: nothing to preview yet")
    assert error_of(lambda: studio.preview_control(None, "init image", init, "canny", "", 200,
                                                   100, unit=1)) \
        .startswith("ControlNet unit 1 low: the low Canny threshold")
    assert error_of(lambda: studio.preview_control(None, "init image", init, "canny", "", 0,
                                                   100, unit=3)) \
        .startswith("ControlNet unit 3 low: controlnets[0].low must be")
    wrong = error_of(lambda: studio.preview_control(None, "init image", init, "depth",
                                                    "tiny-pose", unit=2))
    assert wrong.startswith("ControlNet unit 2 detector: tiny-pose is a pose model"), wrong
    # Only listed detectors: a shared page cannot point at other folders on the server.
    path = error_of(lambda: studio.preview_control(None, "init image", init, "depth", "/etc",
                                                   unit=1))
    assert path.startswith("ControlNet unit 1 detector: '/etc' is not one of this studio's "
                           "detector models (tiny-depth, tiny-pose)"), path
    kind = error_of(lambda: studio.preview_control(None, "init image", init, "sketch", unit=1))
    assert kind.startswith("ControlNet unit 1 preprocessor"), kind


def test_depth_and_pose_units_run_with_the_detectors(studio):
    init = picture(10)
    canny = run(studio, init, **unit(1))
    depth = run(studio, init, **unit(1, preprocessor="depth", detector=""))
    assert "preprocessor: depth" in depth.infotext and "detector: tiny-depth" in depth.infotext
    assert np.abs(pixels(depth) - pixels(canny)).max() > 0
    pose = run(studio, init, **unit(1, preprocessor="pose", detector="tiny-pose"))
    assert "detector: tiny-pose" in pose.infotext
    bad = error_of(lambda: run(studio, init, **unit(1, preprocessor="pose", detector="../x")))
    assert bad.startswith("ControlNet unit 1 detector: '../x' is not one of"), bad
    choices = studio.detector_models()
    assert choices[0][1] == "" and ("tiny-depth (depth)", "tiny-depth") in choices


# -- latents, memory, PAG ------------------------------------------------------------------------
def test_latent_output_then_latent_input(studio):
    session = Session()
    view = run(studio, picture(10), session, output_type="latent")
    saved = session.current.path
    assert view.path == f"saved as {saved.name}" and saved.suffix == ".safetensors"
    files = studio.latent_files(session)
    # A copy for download, outside the outputs folder (which is never served as such).
    [copy] = files["value"]
    assert files["visible"] is True and Path(copy).read_bytes() == saved.read_bytes()
    assert studio.engine.outputs_dir not in Path(copy).parents
    again = run(studio, None, latents=saved, strength=0.5)
    assert again.gallery[0][0].size == (64, 64)
    assert studio.latent_files(Session())["visible"] is False
    wrong = error_of(lambda: run(studio, None, latents=saved.with_suffix(".png")))
    assert wrong.startswith("Latent input: "), wrong
    text = error_of(lambda: run(studio, None, latents=str(saved)))
    assert "send the file as a file" in text


def test_memory_modes_and_pag(studio):
    view = run(studio, picture(11), attention_slicing="on", vae_tiling="off", pag_scale=3)
    for text in ("Attention slicing: on", "VAE tiling: off", "PAG scale: 3"):
        assert text in view.infotext
    bad = error_of(lambda: run(studio, picture(11), cpu_offload="sometimes"))
    assert bad.startswith("CPU offload must be one of: auto, on, off"), bad
    assert error_of(lambda: run(studio, picture(11), pag_scale=11)).startswith("PAG scale must")


def test_draft_mode_from_the_studio(studio):
    view = run(studio, picture(11), draft=1, steps=4, strength=1.0, pag_scale=0)
    assert "Draft: 1" in view.infotext
    assert "Draft mode (lossy)" in view.status
    assert error_of(lambda: run(studio, picture(11), draft=7)).startswith("Draft must")
    *updates, _, _ = studio.send_to_img2img(view.infotext)
    assert dict(zip(handlers.FILL_FIELDS, updates))["draft"] == 1


# -- PNG Info and the X/Y plot -------------------------------------------------------------------
def test_send_to_img2img_fills_the_adapter_controls(studio, models):
    text = ("a fox <lora:film:0.5>\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 5, "
            "Size: 64x64, Model: tiny-random, Denoising strength: 0.5, Attention slicing: on, "
            "LoRAs: \"film:0.7, gone:1, styles/grain:-0.5\", "
            f"IP-Adapter: {models / 'IP-Adapter' / 'tiny-ip'}, IP-Adapter scale: 0.8, "
            "PAG scale: 1.5, Mask blur: 6, Inpaint area: Only masked, Masked area padding: 16, "
            "Masked content: fill, "
            f"ControlNet 0: \"model: {models / 'ControlNet' / 'tiny-canny'}, source: upload, "
            "preprocessor: none, scale: 0.6, start: 0.1, end: 0.9, low: 100, high: 200\", "
            "ControlNet 1: \"model: /elsewhere/cn, source: init image, preprocessor: canny, "
            "scale: 1, start: 0, end: 1, low: 100, high: 200\"")
    summary = studio._parsed_summary(infotext.parse(text))
    assert "| LoRAs | film:0.7, gone:1, styles/grain:-0.5 |" in summary
    assert "| ControlNet | tiny-canny (none, scale 0.6, upload)" in summary
    *updates, tab, message = studio.send_to_img2img(text)
    filled = dict(zip(handlers.FILL_FIELDS, updates))
    assert filled["loras"]["value"] == ["film", "styles/grain"]
    assert filled["lora_weights"]["value"]["data"] == [["film", 0.7], ["styles/grain", -0.5]]
    assert filled["ip_adapter"] == "tiny-ip" and filled["ip_adapter_scale"] == 0.8
    assert filled["pag_scale"] == 1.5 and filled["attention_slicing"] == "on"
    assert (filled["mask_blur"], filled["inpaint_area"], filled["inpaint_padding"],
            filled["masked_content"]) == (6, "only masked", 16, "fill")
    assert filled["cn1_enabled"] is True and filled["cn1_model"] == "tiny-canny"
    assert (filled["cn1_source"], filled["cn1_preprocessor"], filled["cn1_scale"],
            filled["cn1_start"], filled["cn1_end"]) == ("upload", "none", 0.6, 0.1, 0.9)
    assert filled["cn2_enabled"] is False and filled["cn3_enabled"] is False
    assert "'gone' is not in" in message and "/elsewhere/cn" in message
    assert "LoRAs" in message and "ControlNet" in message and tab.selected == "img2img"
    # What was filled runs as it reads (the ControlNet unit needs its upload).
    settings = {k: v for k, v in filled.items()
                if not (isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1)}
    settings["loras"] = settings["loras"]["value"]
    settings["lora_weights"] = settings["lora_weights"]["value"]
    settings.update(steps=2, cn1_image=picture(12), mode="img2img", pag_scale=0)
    assert "**Done**" in run(studio, picture(12), **settings).status


def _page_after(page: dict, updates) -> dict:
    """The page's settings after the updates of send_to_img2img are applied to them."""
    page = dict(page)
    for key, update in zip(handlers.FILL_FIELDS, updates):
        if isinstance(update, dict) and update.get("__type__") == "update":
            if "value" in update:
                page[key] = update["value"]
        else:
            page[key] = update
    return page


def test_send_to_img2img_reproduces_the_picture_whatever_the_page_held(studio):
    """A PNG made without adapters, sent to a page that has a LoRA, an IP-Adapter, a ControlNet
    unit and other settings on: every one of them goes back to what made the PNG."""
    init = picture(16)
    made = run(studio, init, prompt="a quiet harbour", seed=21, pag_scale=0.0)
    busy = dict(FAST, prompt="something else", seed=3, loras=["film"],
                lora_weights=[["film", 0.9]], ip_adapter="tiny-ip", ip_adapter_scale=0.9,
                pag_scale=2.0, mask_blur=9, batch_size=2, **unit(1))
    *updates, _, message = studio.send_to_img2img(made.infotext)
    page = _page_after(busy, updates)
    assert page["loras"] == [] and page["ip_adapter"] == "" and page["cn1_enabled"] is False
    again = run(studio, init, reference_image=picture(1), **page)
    assert np.array_equal(pixels(again), pixels(made))
    assert "Not restored" not in message


def test_own_output_round_trip(studio):
    init = picture(13)
    view = run(studio, init, loras=["film"], lora_weights=[["film", 0.6]], mode="inpaint",
               mask={"layers": [strokes()]}, mask_blur=2, **unit(1))
    *updates, _, message = studio.send_to_img2img(view.infotext)
    filled = dict(zip(handlers.FILL_FIELDS, updates))
    assert "Not used" not in message, message
    assert filled["loras"]["value"] == ["film"] and filled["mask_blur"] == 2
    assert filled["cn1_model"] == "tiny-canny" and filled["cn1_low"] == 50


def test_xy_plot_with_adapters(studio):
    views = list(studio.xy_plot(Session(), picture(14), steps=4, seed=3, x_axis="CFG scale",
                                x_values="5, 9", y_axis="Denoising strength", y_values="0.5",
                                loras=["film"], pag_scale=0, output_type="latent", **unit(1)))
    assert views[-1].status.startswith("**Done**: 2 cells")
    [grid] = studio.engine.outputs_dir.rglob(views[-1].path.removeprefix("saved as "))
    assert "LoRAs" in Image.open(grid).info["parameters"]
    with pytest.raises(gr.Error, match="ControlNet unit 1 image"):
        next(studio.xy_plot(Session(), picture(14), **unit(1, source="upload")))


# -- the API -------------------------------------------------------------------------------------
def test_every_extra_is_a_named_api_parameter(studio):
    from webui.ui.app import build

    parameters = inspect.signature(studio.generate).parameters
    assert set(handlers.EXTRAS) <= set(parameters)
    with pytest.raises(TypeError, match="unknown settings: lora"):
        run(studio, picture(), lora=["film"])
    info = build(studio).get_api_info()["named_endpoints"]
    names = [p["parameter_name"] for p in info["/img2img"]["parameters"]]
    assert names[:3] == ["init_image", "reference_image", "model"]
    assert {"mode", "mask", "loras", "lora_weights", "ip_adapter", "cn3_high", "latents"} <= \
        set(names)
    assert all(p["parameter_has_default"] for p in info["/img2img"]["parameters"][1:])
    assert re.search("cn1_model", str(info["/xy_plot"]["parameters"]))


def test_api_client_inpaints_with_a_lora(studio, tmp_path, monkeypatch):
    """The keyword settings work from gradio_client as they do from the page."""
    from gradio_client import Client, handle_file

    picture(15).save(tmp_path / "photo.png")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    mask.save(tmp_path / "mask.png")
    with served(studio, users=()) as url:
        client = Client(url, verbose=False)
        status, _, gallery, _, text, saved = client.predict(
            handle_file(str(tmp_path / "photo.png")), steps=2, seed=5, pag_scale=0,
            mode="inpaint", mask_image=handle_file(str(tmp_path / "mask.png")),
            loras=["film"], lora_weights={"headers": handlers.LORA_HEADERS,
                                          "data": [["film", 0.5]], "metadata": None},
            api_name="/img2img")
        with pytest.raises(Exception, match="ControlNet unit 1 image"):
            client.predict(handle_file(str(tmp_path / "photo.png")), steps=2, cn1_enabled=True,
                           cn1_model="tiny-canny", cn1_source="upload", api_name="/img2img")
    assert status.startswith("**Done**") and "Inpainted" in status
    assert 'LoRAs: "film:0.5"' in text and "Inpaint area: Whole picture" in text
    assert saved.startswith("saved as ") and Path(gallery[0]["image"]).is_file()


def test_engine_messages_on_the_page_name_no_server_folder(studio, models):
    """An adapter error names its file; the page shows it under the models folder's name."""
    message = error_of(lambda: run(studio, picture(3), ip_adapter="no-encoder",
                                   reference_image=picture(4)))
    assert "image encoder" in message
    assert str(models.resolve()) not in message and str(models.parent) not in message
    assert "models/IP-Adapter/no-encoder" in message
