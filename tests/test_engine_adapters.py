"""The adapters through the engine: job requests in, PNG/latent files and infotext out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui import infotext
from webui.engine import JobRequest
from webui.engine.core import Engine
from webui.engine.outputs import read_infotext
from webui.errors import InputError, OutOfMemory
from webui.params import make
from webui.tiny import build_pipeline

from tests.support.tiny_adapters import make_controlnet, make_ip_adapter, make_lora


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """An engine whose models folder holds a tiny LoRA, IP-Adapter and ControlNet."""
    root = tmp_path_factory.mktemp("adapters")
    pipe = build_pipeline("tiny-random")
    lora_dir = root / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    make_lora(pipe, lora_dir / "film.safetensors", seed=1)
    make_lora(pipe, lora_dir / "grain.safetensors", fmt="kohya", seed=2)
    ip = make_ip_adapter(pipe, root / "ip-adapter", seed=3)
    controlnet = make_controlnet(pipe, root / "controlnet", seed=4)
    engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                    model="tiny-random")
    yield engine, ip, controlnet
    engine.unload()


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    image = Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=(250, 250, 250))
    return image


REQUEST_FIELDS = ("mask", "ip_image", "control_images", "latents")


def run(engine, save: bool = False, allow_paths: bool = False, **settings):
    """One job: `init`, `mask`, `ip_image`, `control_images` and `latents` go into the request
    beside the settings (they are not settings), everything else is a setting."""
    values = {"prompt": "a cat", "steps": 4, "strength": 0.5, "seed": 11, "pag_scale": 0.0}
    values.update(settings)
    init = settings.pop("init", picture())
    values.pop("init", None)
    pictures = {name: values.pop(name) for name in REQUEST_FIELDS if name in values}
    return engine.generate(JobRequest(make(**values), init, save=save, allow_paths=allow_paths,
                                      **pictures))


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image, dtype=np.int16)


def test_lora_from_params_and_prompt_syntax_agree(studio):
    engine, _, _ = studio
    base = pixels(run(engine))
    with_params = pixels(run(engine, loras=[{"name": "film", "weight": 1.0}]))
    with_prompt = run(engine, prompt="a cat <lora:film:1>")
    assert np.abs(with_params - base).max() > 0
    assert np.array_equal(with_params, pixels(with_prompt))
    # Turning it off again gives the base picture exactly.
    assert np.array_equal(pixels(run(engine)), base)


def test_lora_goes_into_infotext_and_back(studio):
    engine, _, _ = studio
    result = run(engine, save=True, loras=[{"name": "film", "weight": 0.7},
                                           {"name": "grain", "weight": 0.3}])
    text = read_infotext(Image.open(result.images[0].path))
    assert "LoRAs: \"film:0.7, grain:0.3\"" in text
    parsed = infotext.parse(text).params
    assert [(lora.name, lora.weight) for lora in parsed.loras] == [("film", 0.7), ("grain", 0.3)]


def test_unknown_lora_is_a_clear_error_and_engine_keeps_working(studio):
    engine, _, _ = studio
    # As the command line asks (allow_paths): past the studio's refusal, the LoRA loader's own
    # error names the LoRAs there are.
    with pytest.raises(InputError, match="film"):
        run(engine, prompt="a cat <lora:nope:1>", allow_paths=True)
    assert run(engine).images


def test_pag_default_on_and_zero_is_plain(studio):
    engine, _, _ = studio
    assert make().pag_scale == 3.0
    plain = pixels(run(engine, pag_scale=0.0))
    guided = run(engine, pag_scale=3.0)
    assert np.abs(pixels(guided) - plain).max() > 0
    assert "PAG scale: 3" in guided.images[0].infotext


@pytest.mark.parametrize("area", ["whole picture", "only masked"])
@pytest.mark.parametrize("blur", [0, 4])
def test_inpaint_keeps_the_unmasked_area_pixel_for_pixel(studio, area, blur):
    engine, _, _ = studio
    init = picture(5).resize((96, 64))
    mask = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 47, 55), fill=255)
    result = run(engine, init=init, mask=mask, strength=0.9, inpaint_area=area,
                 inpaint_padding=8, mask_blur=blur)
    out = pixels(result)
    original = np.asarray(init, dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], original[outside])
    inside = np.asarray(mask.crop((12, 12, 44, 52)))  # well inside, past the seam
    assert np.abs(out[12:52, 12:44] - original[12:52, 12:44]).max() > 10 and inside.all()
    assert "outside it every pixel is the original's" in result.notice
    assert f"Inpaint area: {area.capitalize()}" in result.images[0].infotext
    assert f"Mask blur: {blur}" in result.images[0].infotext


def test_mask_is_resized_with_the_picture(studio):
    engine, _, _ = studio
    big = picture(6).resize((128, 128))
    mask = Image.new("L", (128, 128), 255)
    result = run(engine, init=big, width=64, height=64, mask=mask)
    assert result.images[0].image.size == (64, 64)


def test_controlnet_from_init_image_and_missing_upload(studio):
    engine, _, controlnet = studio
    # The ControlNet is named by its path outside the models folder: the command line's request.
    unit = {"model": str(controlnet), "preprocessor": "canny", "scale": 1.0}
    result = run(engine, controlnets=[unit], allow_paths=True)
    assert result.images[0].image.size == (64, 64)
    assert "ControlNet 0" in result.images[0].infotext
    with pytest.raises(InputError, match="no control image"):
        run(engine, controlnets=[{**unit, "source": "upload"}], allow_paths=True)
    uploaded = run(engine, controlnets=[{**unit, "source": "upload"}],
                   control_images=[picture(9)], allow_paths=True)
    assert uploaded.images


def test_ip_adapter_needs_reference_and_applies_with_one(studio):
    engine, ip, _ = studio
    base = pixels(run(engine))
    # The IP-Adapter is named by its path outside the models folder: the command line's request.
    no_reference = run(engine, ip_adapter=str(ip), allow_paths=True)
    assert "no reference image" in no_reference.notice
    assert np.array_equal(pixels(no_reference), base)
    steered = run(engine, ip_adapter=str(ip), ip_adapter_scale=1.0, ip_image=picture(7),
                  allow_paths=True)
    assert np.abs(pixels(steered) - base).max() > 0
    assert "IP-Adapter scale: 1" in steered.images[0].infotext


def test_latent_output_then_latent_input(studio):
    engine, _, _ = studio
    result = run(engine, save=True, output_type="latent")
    item = result.images[0]
    assert item.path.suffix == ".safetensors" and item.path.is_file()
    assert tuple(item.latents.shape) == (4, 8, 8)
    # A latent file by path, as the command line passes it.
    again = run(engine, latents=item.path, init=None, strength=0.5, allow_paths=True)
    assert again.images[0].image.size == (64, 64)
    # A latent tensor: only the in-process engine takes one (others get the file's bytes).
    with pytest.raises(InputError, match="2 channels"):
        run(engine, latents=item.latents[None, :2], init=None)
    assert run(engine).images  # still serving


def test_out_of_memory_becomes_advice_and_engine_keeps_serving(studio, monkeypatch):
    # The in-process engine itself: it patches the engine's sampling step.
    engine, _, _ = studio

    class OutOfMemoryError(RuntimeError):
        """Stands in for the CUDA allocator's error, which has this class name."""

    original = engine._sample

    def exhausted(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "_sample", exhausted)
    with pytest.raises(OutOfMemory, match="out of GPU memory") as caught:
        run(engine)
    # Its own kind of error, not blamed on a setting such as the width.
    assert not isinstance(caught.value, InputError) and not hasattr(caught.value, "field")
    monkeypatch.setattr(engine, "_sample", original)
    assert run(engine).images


def test_pag_runs_with_inpaint_only_masked(studio):
    engine, _, _ = studio
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    guided = run(engine, mask=mask, pag_scale=3.0, inpaint_area="only masked")
    plain = run(engine, mask=mask, pag_scale=0.0, inpaint_area="only masked")
    assert "PAG" not in guided.notice and "PAG scale: 3" in guided.images[0].infotext
    assert np.abs(pixels(guided) - pixels(plain)).max() > 0


def test_pag_is_turned_off_where_no_pipeline_joins_it_and_said_so(tmp_path):
    from webui.params import ControlNetUnit

    controlnet = make_controlnet(build_pipeline("tiny-random-xl"), tmp_path / "cn-xl", seed=5)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-random-xl")
    try:
        mask = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
        # The ControlNet is named by its path outside the models folder: the command line's.
        unit = ControlNetUnit(model=str(controlnet))
        result = run(engine, mask=mask, pag_scale=3.0, controlnets=[unit], save=True,
                     allow_paths=True)
        assert "PAG was off for this job" in result.notice and "SDXL" in result.notice
        assert result.params.pag_scale == 0 and "PAG scale: 0" in result.images[0].infotext
        assert "PAG scale: 0" in read_infotext(Image.open(result.images[0].path))
        # Without the mask the SDXL PAG ControlNet img2img pipeline exists: PAG stays on.
        kept = run(engine, pag_scale=3.0, controlnets=[unit], allow_paths=True)
        assert "PAG" not in kept.notice and kept.params.pag_scale == 3.0
    finally:
        engine.unload()


# -- sizes other than the tiny model's default (64x64) -------------------------------------------
def _wide_mask(size=(96, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=255)
    return mask


ROUTES = {
    "img2img": {},
    "img2img PAG": {"pag_scale": 3.0},
    "inpaint whole picture": {"mask": True},
    "inpaint whole picture PAG": {"mask": True, "pag_scale": 3.0},
    "inpaint only masked": {"mask": True, "inpaint_area": "only masked"},
    "inpaint only masked PAG": {"mask": True, "inpaint_area": "only masked", "pag_scale": 3.0},
    "inpaint latent noise": {"mask": True, "masked_content": "latent noise"},
    "ControlNet": {"controlnet": True},
    "ControlNet PAG": {"controlnet": True, "pag_scale": 3.0},
    "ControlNet inpaint": {"controlnet": True, "mask": True},
}


def _route(engine, controlnet, route: dict, init, **extra):
    settings = {k: v for k, v in route.items() if k not in ("mask", "controlnet")}
    mask = _wide_mask(init.size) if route.get("mask") else None
    if route.get("controlnet"):
        # Named by its path outside the models folder: the command line's request.
        settings["controlnets"] = [{"model": str(controlnet), "preprocessor": "canny"}]
    return run(engine, init=init, mask=mask, save=True, allow_paths=bool(route.get("controlnet")),
               **settings, **extra)


@pytest.mark.parametrize("name", list(ROUTES))
def test_every_route_keeps_a_non_square_size(studio, name):
    engine, _, controlnet = studio
    init = picture(3).resize((96, 64))
    result = _route(engine, controlnet, ROUTES[name], init)
    item = result.images[0]
    assert item.image.size == (96, 64), name
    assert Image.open(item.path).size == (96, 64)
    assert "Size: 96x64" in item.infotext
    # A size asked for explicitly wins over the picture's.
    tall = _route(engine, controlnet, ROUTES[name], picture(3), width=64, height=128)
    assert tall.images[0].image.size == (64, 128), name


def test_latents_keep_a_non_square_size(studio):
    engine, _, _ = studio
    made = run(engine, init=picture(4).resize((96, 64)), output_type="latent")
    assert tuple(made.images[0].latents.shape) == (4, 8, 12)
    # A latent tensor: only the in-process engine takes one (others get the file's bytes).
    again = run(engine, latents=made.images[0].latents, init=None)
    assert again.images[0].image.size == (96, 64) and "Size: 96x64" in again.images[0].infotext


@pytest.mark.parametrize("name", ["img2img", "img2img PAG", "inpaint whole picture",
                                  "inpaint only masked", "ControlNet", "ControlNet inpaint"])
def test_sdxl_routes_keep_a_non_square_size(sdxl, name):
    engine, controlnet = sdxl
    result = _route(engine, controlnet, ROUTES[name], picture(3).resize((96, 64)))
    assert result.images[0].image.size == (96, 64), name
    assert "Size: 96x64" in result.images[0].infotext


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-adapters")
    controlnet = make_controlnet(build_pipeline("tiny-random-xl"), root / "cn-xl", seed=5)
    engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                    model="tiny-random-xl")
    yield engine, controlnet
    engine.unload()


@pytest.mark.parametrize("kind", ["tiny-random", "tiny-random-xl"])
def test_an_inpainting_model_on_the_img2img_tab_runs_with_a_full_mask(tmp_path, kind):
    # The in-process engine itself: it reads the resident pipeline's UNet.
    from tests.support.testing import tiny_inpainting_pipeline

    folder = tmp_path / "models" / "Stable-diffusion" / "tiny-inpainting"
    tiny_inpainting_pipeline(kind).save_pretrained(folder)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-inpainting")
    try:
        init = picture(8).resize((96, 64))
        result = run(engine, init=init, strength=0.6)
        assert engine._pipe.unet.config.in_channels == 9
        assert result.images[0].image.size == (96, 64)
        assert "inpainting model" in result.notice
        # Inpainting itself works as with any model, the unmasked area kept exactly.
        mask = _wide_mask((96, 64))
        inpainted = pixels(run(engine, init=init, mask=mask, strength=0.9))
        outside = np.asarray(mask) == 0
        assert np.array_equal(inpainted[outside], np.asarray(init, dtype=np.int16)[outside])
        with pytest.raises(InputError, match="inpainting model"):
            run(engine, latents=torch.zeros(1, 4, 8, 12), init=None)  # in-process: a tensor
        assert run(engine, init=init).images  # still serving
    finally:
        engine.unload()


def test_attention_slicing_follows_the_ip_adapter_in_and_out(studio):
    """Loading or removing an IP-Adapter replaces the attention processors; slicing is set from
    the processors installed, so it is never silently lost."""
    # The in-process engine itself: it reads the resident pipeline's attention processors.
    from webui.engine.memory import SLICING_WITH_IP_ADAPTER, attention_sliced

    engine, ip, _ = studio

    def names():
        return {type(p).__name__ for p in engine._pipe.unet.attn_processors.values()}

    run(engine, attention_slicing="on")
    assert attention_sliced(engine._pipe)
    # The IP-Adapter is named by its path outside the models folder: the command line's request.
    steered = run(engine, attention_slicing="on", ip_adapter=str(ip), ip_image=picture(7),
                  allow_paths=True)
    assert any("IPAdapter" in name for name in names())
    assert SLICING_WITH_IP_ADAPTER in steered.notice
    plain = run(engine, attention_slicing="on")
    assert attention_sliced(engine._pipe) and not any("IPAdapter" in n for n in names())
    assert SLICING_WITH_IP_ADAPTER not in plain.notice
    run(engine, attention_slicing="off")
    assert not attention_sliced(engine._pipe)


def test_infotext_names_adapters_relative_to_their_folder(tmp_path):
    """A PNG made here names its ControlNet and IP-Adapter as the models folder does, so it
    loads on another machine; no server path and no empty entry goes into it."""
    pipe = build_pipeline("tiny-random")
    models = tmp_path / "models"
    make_controlnet(pipe, models / "ControlNet" / "sketch" / "tiny-canny", seed=4)
    make_ip_adapter(pipe, models / "IP-Adapter" / "tiny-ip", seed=3)
    engine = Engine(models_dir=models, outputs_dir=tmp_path / "outputs", device="cpu",
                    model="tiny-random")
    try:
        # By name (as the studio sends it) and by path (as the command line may).
        for model, ip in (("sketch/tiny-canny", "tiny-ip"),
                          (str(models / "ControlNet" / "sketch" / "tiny-canny"),
                           str(models / "IP-Adapter" / "tiny-ip"))):
            result = run(engine, save=True, ip_adapter=ip, ip_image=picture(7),
                         controlnets=[{"model": model, "preprocessor": "canny"}],
                         allow_paths=model != "sketch/tiny-canny")
            text = read_infotext(Image.open(result.images[0].path))
            assert str(tmp_path) not in text
            assert "model: sketch/tiny-canny" in text and "IP-Adapter: tiny-ip" in text
            assert "detector" not in text  # canny uses none: no empty entry
            assert result.params.controlnets[0].model == "sketch/tiny-canny"
            # Read back, it runs again to the same picture.
            again = run(engine, ip_adapter=infotext.parse(text).params.ip_adapter,
                        ip_image=picture(7),
                        controlnets=[infotext.parse(text).params.controlnets[0].model_dump()])
            assert np.array_equal(pixels(again), pixels(result))
    finally:
        engine.unload()
