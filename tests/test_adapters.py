"""The adapter layer on the tiny models: LoRA, IP-Adapter, PAG, inpainting, ControlNet, latents.

Every adapter file is written offline by tests.support.tiny_adapters into a temporary folder.
Outputs are compared as NumPy arrays: "equals base" means bit-identical, "differs" means a
visible change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from webui.engine.adapter_inputs import AdapterError
from webui.engine.adapters import Adapters, JobAdapters
from webui.engine.controlnet import ControlNetSpec, canny, canny_edges
from webui.engine.inpaint import mask_to_l, overlay_original
from webui.engine.ip_adapter import IPAdapterSpec
from webui.engine.latents import check_latents, load_latents, save_latents
from webui.engine.lora import LoraSpec, adapter_name, parse_prompt_loras
from webui.tiny import TINY_SD, TINY_SDXL, build_pipeline, get_dummy_components

from tests.support.tiny_adapters import make_controlnet, make_ip_adapter, make_lora

STEPS = 3


def _picture(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


INIT = _picture(0)
REFERENCE = _picture(1)


def _rectangle(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (40, 40, 40))
    ImageDraw.Draw(image).rectangle([16, 20, 47, 43], fill=(220, 200, 180))
    return image


def _mask(size: int = 64, box=(16, 16, 47, 47)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _run(pipe, kwargs: dict, seed: int = 0) -> np.ndarray:
    output = pipe(prompt="a red fox", strength=0.75, num_inference_steps=STEPS,
                  generator=torch.Generator().manual_seed(seed), **kwargs).images
    if isinstance(output, list):
        return np.stack([np.asarray(i, dtype=np.float32) / 255 for i in output])
    return np.asarray(output)


def _out(adapters: Adapters, mode: str = "img2img", **options) -> np.ndarray:
    options.setdefault("image", INIT)
    options.setdefault("output_type", "np")
    pipe, kwargs = adapters.prepare(JobAdapters(mode, **options))
    return _run(pipe, kwargs)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """The tiny SD1 pipeline, its base output, and adapter files built for it."""
    root = tmp_path_factory.mktemp("sd1")
    pipe = build_pipeline(TINY_SD)
    pipe.set_progress_bar_config(disable=True)
    lora_dir = root / "Lora"
    make_lora(pipe, lora_dir / "style.safetensors", fmt="diffusers", seed=0)
    make_lora(pipe, lora_dir / "style_trainer.safetensors", fmt="trainer", seed=0)
    make_lora(pipe, lora_dir / "sub" / "second.safetensors", seed=7)
    # Built before any IP-Adapter touches the UNet (from_unet cannot copy IP-Adapter layers).
    controlnet = make_controlnet(pipe, root / "controlnet", seed=0)
    controlnet_2 = make_controlnet(pipe, root / "controlnet_2", seed=3)
    ip = make_ip_adapter(pipe, root / "ip", seed=0)
    base = _run(pipe, {"image": INIT, "output_type": "np"})
    return {"pipe": pipe, "root": root, "lora_dir": lora_dir, "controlnet": controlnet,
            "controlnet_2": controlnet_2, "ip": ip, "base": base}


@pytest.fixture
def adapters(sd1):
    adapters = Adapters(sd1["pipe"], sd1["lora_dir"])
    yield adapters
    adapters.unload_all()


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    root = tmp_path_factory.mktemp("xl")
    pipe = build_pipeline(TINY_SDXL)
    pipe.set_progress_bar_config(disable=True)
    lora_dir = root / "Lora"
    make_lora(pipe, lora_dir / "xl_style.safetensors", fmt="trainer", seed=0)
    base = _run(pipe, {"image": INIT, "output_type": "np"})
    return {"pipe": pipe, "root": root, "lora_dir": lora_dir, "base": base}


# -- LoRA ------------------------------------------------------------------------------------


def test_builders_leave_the_pipeline_unchanged(sd1):
    assert not any("lora" in k for k in sd1["pipe"].unet.state_dict())
    assert np.array_equal(_run(sd1["pipe"], {"image": INIT, "output_type": "np"}), sd1["base"])


def test_lora_changes_output_and_weight_zero_or_unload_is_base(sd1, adapters):
    styled = _out(adapters, loras=[("style", 1.0)])
    assert np.abs(styled - sd1["base"]).max() > 1e-2
    assert np.array_equal(_out(adapters, loras=[("style", 0.0)]), sd1["base"])
    assert np.array_equal(_out(adapters, loras=[]), sd1["base"])
    assert not adapters.loras.has_peft_layers()  # unloaded, not just switched off
    # Same LoRA again after an unload gives the same picture as the first time.
    assert np.array_equal(_out(adapters, loras=[("style", 1.0)]), styled)


def test_trainer_and_diffusers_formats_give_the_same_result(sd1, adapters):
    # Both files hold the same weights (same seed) and alpha = rank / 2, which only the metadata
    # (diffusers) and the .alpha keys (trainer layout) carry.
    diffusers_format = _out(adapters, loras=[("style", 1.0)])
    trainer = _out(adapters, loras=[("style_trainer", 1.0)])
    assert np.allclose(diffusers_format, trainer, atol=1e-5)


def test_same_set_does_not_reload_and_weight_change_only_sets_adapters(sd1, adapters,
                                                                       monkeypatch):
    pipe = sd1["pipe"]
    loads, sets = [], []
    real_load, real_set = pipe.load_lora_weights, pipe.set_adapters
    monkeypatch.setattr(pipe, "load_lora_weights", lambda *a, **k: (loads.append(a), real_load(*a, **k)))
    monkeypatch.setattr(pipe, "set_adapters", lambda *a, **k: (sets.append(a), real_set(*a, **k)))
    full = _out(adapters, loras=[("style", 1.0), ("second", 0.5)])
    assert len(loads) == 2 and len(sets) == 1
    assert np.array_equal(_out(adapters, loras=[("style", 1.0), ("second", 0.5)]), full)
    assert len(loads) == 2 and len(sets) == 1  # nothing happened at all
    half = _out(adapters, loras=[("style", 0.5), ("second", 0.5)])
    assert len(loads) == 2 and len(sets) == 2
    assert np.abs(half - full).max() > 1e-3
    # Removing one deletes only that adapter; the other stays loaded.
    only_style = _out(adapters, loras=[LoraSpec("style", 1.0)])
    assert len(loads) == 2
    assert list(adapters.loaded_loras()) == ["style"]
    assert set(pipe.get_list_adapters()["unet"]) == {adapter_name("style")}
    assert np.abs(only_style - full).max() > 1e-3


def test_prompt_syntax():
    assert parse_prompt_loras("a fox <lora:film:0.8>, snow") == ("a fox, snow", [("film", 0.8)])
    assert parse_prompt_loras("<lora:film>a fox") == ("a fox", [("film", 1.0)])
    assert parse_prompt_loras("a fox < lora : film grain : -0.5 > at dusk") == \
        ("a fox at dusk", [("film grain", -0.5)])
    assert parse_prompt_loras("a <LORA:a:1> <lora:b:.25> <lora:a:0.3>")[1] == [("a", 0.3), ("b", 0.25)]
    assert parse_prompt_loras("no tags here") == ("no tags here", [])
    with pytest.raises(AdapterError, match="must be a number"):
        parse_prompt_loras("<lora:film:strong>")
    with pytest.raises(AdapterError, match="names no LoRA"):
        parse_prompt_loras("<lora::0.5>")


def test_prompt_lora_names_are_checked(sd1, adapters):
    clean, loras = adapters.parse_prompt("a fox <lora:second:0.7>")
    assert clean == "a fox" and loras == [("second", 0.7)]  # found in a subfolder by its stem
    with pytest.raises(AdapterError, match="unknown LoRA 'nope'.*style, style_trainer, sub/second"):
        adapters.parse_prompt("a fox <lora:nope>")


def test_adapter_names_are_valid_module_names():
    names = {adapter_name(n) for n in ("a-b", "a b", "a_b", "0", "weight", "style/v2.1")}
    assert len(names) == 6
    assert all(n.isidentifier() and "." not in n for n in names)


def test_bad_lora_files_raise_and_leave_the_pipeline_unchanged(sd1, xl, adapters):
    lora_dir = sd1["lora_dir"]
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    from safetensors.torch import save_file

    save_file({"conv_in.weight": torch.zeros(4, 4)}, str(lora_dir / "checkpoint.safetensors"))
    make_lora(xl["pipe"], lora_dir / "for_xl.safetensors", fmt="diffusers")
    make_lora(xl["pipe"], lora_dir / "for_xl_trainer.safetensors", fmt="trainer")
    (lora_dir / "old.ckpt").write_bytes(b"pickle")
    try:
        styled = _out(adapters, loras=[("style", 1.0)])
        for name, message in [("broken", "damaged"), ("checkpoint", "not a LoRA"),
                              ("for_xl", "another kind of model"),
                              ("for_xl_trainer", "another kind of model"), ("old", "pickle")]:
            with pytest.raises(AdapterError, match=message) as info:
                adapters.prepare(JobAdapters(image=INIT, loras=[("style", 1.0), (name, 1.0)]))
            assert info.value.field == "lora"
            # The LoRAs of the previous job are untouched and still applied.
            assert np.array_equal(_out(adapters, loras=[("style", 1.0)]), styled), name
        for name in ("for_xl", "broken"):
            with pytest.raises(AdapterError):
                adapters.prepare(JobAdapters(image=INIT, loras=[(name, 1.0)]))
        assert np.array_equal(_out(adapters, loras=[]), sd1["base"])
        assert not adapters.loras.has_peft_layers()
    finally:
        for name in ("broken.safetensors", "checkpoint.safetensors", "for_xl.safetensors",
                     "for_xl_trainer.safetensors", "old.ckpt"):
            (lora_dir / name).unlink()


# -- IP-Adapter ------------------------------------------------------------------------------


def test_ip_adapter_scale_and_reference(sd1, adapters, monkeypatch):
    pipe = sd1["pipe"]
    loads = []
    real = pipe.load_ip_adapter
    monkeypatch.setattr(pipe, "load_ip_adapter", lambda *a, **k: (loads.append(1), real(*a, **k)))
    spec = IPAdapterSpec(str(sd1["ip"]), image=REFERENCE, scale=0.0)
    assert np.array_equal(_out(adapters, ip_adapter=spec), sd1["base"])
    spec.scale = 0.8
    strong = _out(adapters, ip_adapter=spec)
    assert np.abs(strong - sd1["base"]).max() > 1e-2
    # No reference image: not applied, and nothing is reloaded.
    assert np.array_equal(_out(adapters, ip_adapter=IPAdapterSpec(str(sd1["ip"]))), sd1["base"])
    assert np.array_equal(_out(adapters, ip_adapter=IPAdapterSpec(str(sd1["ip"]), REFERENCE, 0.8)),
                          strong)
    assert len(loads) == 1
    # Off, then on again: the weights and the encoder come from memory, not from disk.
    assert np.array_equal(_out(adapters, ip_adapter=None), sd1["base"])
    assert pipe.image_encoder is None
    assert np.array_equal(_out(adapters, ip_adapter=spec), strong)
    # With PAG the same IP-Adapter (same UNet) applies; the PAG pipeline was built before the
    # IP-Adapter was loaded and still gets its image encoder.
    adapters.prepare(JobAdapters(image=INIT, ip_adapter=None, pag_scale=2.0))
    pipe_pag, kwargs = adapters.prepare(JobAdapters(image=INIT, ip_adapter=spec, pag_scale=2.0))
    assert pipe_pag.image_encoder is pipe.image_encoder and "ip_adapter_image" in kwargs
    # Attention slicing replaces the IP-Adapter's processors; prepare notices and restores them.
    pipe.enable_attention_slicing(1)
    try:
        assert np.allclose(_out(adapters, ip_adapter=spec), strong, atol=1e-5)
        assert any("slicing" in n for n in adapters.notices)
    finally:
        pipe.disable_attention_slicing()
    assert np.allclose(_out(adapters, ip_adapter=spec), strong, atol=1e-5)


def test_ip_adapter_errors(sd1, xl, adapters, tmp_path):
    no_encoder = make_ip_adapter(sd1["pipe"], tmp_path / "bare", image_encoder=False)
    with pytest.raises(AdapterError, match="no image encoder"):
        adapters.prepare(JobAdapters(image=INIT,
                                     ip_adapter=IPAdapterSpec(str(no_encoder), REFERENCE)))
    with pytest.raises(AdapterError, match="hub") as info:
        adapters.prepare(JobAdapters(image=INIT,
                                     ip_adapter=IPAdapterSpec("nobody/no-such-ip-adapter",
                                                              REFERENCE)))
    assert info.value.field == "ip_adapter"
    with pytest.raises(AdapterError, match="from 0 to 1"):
        adapters.prepare(JobAdapters(image=INIT,
                                     ip_adapter=IPAdapterSpec(str(sd1["ip"]), REFERENCE, 1.5)))
    for_xl = make_ip_adapter(xl["pipe"], tmp_path / "xl_ip")
    with pytest.raises(AdapterError, match="IP-Adapter"):
        adapters.prepare(JobAdapters(image=INIT, ip_adapter=IPAdapterSpec(str(for_xl), REFERENCE)))
    assert sd1["pipe"].image_encoder is None
    assert np.array_equal(_out(adapters), sd1["base"])


def test_ip_adapter_image_encoder_is_never_a_pickle(sd1, adapters, tmp_path):
    import fnmatch

    from webui.engine.ip_adapter import ip_adapter_files

    folder = make_ip_adapter(sd1["pipe"], tmp_path / "pickled", seed=9)
    encoder = folder / "models" / "image_encoder"
    weights = encoder / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), encoder / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(AdapterError, match="no .safetensors weights.*pickle") as info:
        adapters.prepare(JobAdapters(image=INIT, ip_adapter=IPAdapterSpec(str(folder), REFERENCE)))
    assert info.value.field == "ip_adapter"
    assert np.array_equal(_out(adapters), sd1["base"])  # nothing left loaded
    # From the hub only configs and safetensors are fetched.
    patterns = ip_adapter_files("models", "ip-adapter_sd15.safetensors")
    listing = ["models/ip-adapter_sd15.safetensors", "models/ip-adapter_sd15.bin",
               "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
               "models/image_encoder/pytorch_model.bin", "sdxl_models/image_encoder/x.bin"]
    fetched = [f for f in listing if any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert fetched == ["models/ip-adapter_sd15.safetensors", "models/image_encoder/config.json",
                       "models/image_encoder/model.safetensors"]


# -- PAG -------------------------------------------------------------------------------------


def test_pag_off_is_base_on_differs_and_shares_modules(sd1, adapters):
    pipe, _ = adapters.prepare(JobAdapters(image=INIT, pag_scale=0.0))
    assert pipe is sd1["pipe"]
    assert np.array_equal(_out(adapters, pag_scale=0.0), sd1["base"])
    pag_pipe, kwargs = adapters.prepare(JobAdapters(image=INIT, pag_scale=3.0, output_type="np"))
    assert "PAG" in type(pag_pipe).__name__ and kwargs["pag_scale"] == 3.0
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(pag_pipe, name) is getattr(sd1["pipe"], name), name
    assert np.abs(_run(pag_pipe, kwargs) - sd1["base"]).max() > 1e-3
    assert adapters.prepare(JobAdapters(image=INIT, pag_scale=2.0))[0] is pag_pipe  # cached
    # The engine swaps schedulers on the base pipeline; the PAG pipeline follows.
    from diffusers import DDIMScheduler

    sd1["pipe"].scheduler = DDIMScheduler.from_config(sd1["pipe"].scheduler.config)
    try:
        pipe, _ = adapters.prepare(JobAdapters(image=INIT, pag_scale=2.0))
        assert pipe.scheduler is sd1["pipe"].scheduler
    finally:
        from diffusers import EulerAncestralDiscreteScheduler

        sd1["pipe"].scheduler = EulerAncestralDiscreteScheduler.from_config(
            sd1["pipe"].scheduler.config)
    assert np.array_equal(_run(sd1["pipe"], {"image": INIT, "output_type": "np"}), sd1["base"])


def test_a_failed_pag_run_and_unsupported_combinations_leave_the_base_intact(sd1, adapters):
    def fail(pipe, step, timestep, kwargs):
        raise RuntimeError("stopped")

    pipe, kwargs = adapters.prepare(JobAdapters(image=INIT, pag_scale=3.0, output_type="np"))
    with pytest.raises(RuntimeError):
        pipe(prompt="a red fox", strength=0.75, num_inference_steps=STEPS,
             callback_on_step_end=fail, **kwargs)
    assert np.array_equal(_out(adapters), sd1["base"])
    spec = ControlNetSpec(str(sd1["controlnet"]), _rectangle())
    latents = torch.zeros(1, 4, 8, 8)
    assert adapters.pag_limit(controlnets=True, latent_input=True)
    with pytest.raises(AdapterError, match="PAG cannot run here: .*not from latents") as info:
        adapters.prepare(JobAdapters(image=latents, pag_scale=1.0, controlnets=[spec],
                                     loras=[("style", 1.0)]))
    assert info.value.field == "pag"
    assert not adapters.loaded_loras()  # nothing was changed by the refused job
    assert np.array_equal(_out(adapters), sd1["base"])


def test_pag_with_controlnet_on_sd1_img2img_is_the_full_mask_inpaint_pipeline(sd1, adapters):
    from diffusers import DDIMScheduler

    spec = ControlNetSpec(str(sd1["controlnet"]), image=_rectangle(), preprocessor="canny")
    assert adapters.pag_limit("img2img", controlnets=True) == ""
    pipe, kwargs = adapters.prepare(JobAdapters(image=INIT, pag_scale=3.0, controlnets=[spec],
                                                output_type="np"))
    assert type(pipe).__name__ == "StableDiffusionControlNetPAGInpaintPipeline"
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name) is getattr(sd1["pipe"], name), name
    mask = np.asarray(kwargs["mask_image"])
    assert mask.shape == (64, 64) and (mask == 255).all()
    guided = _run(pipe, kwargs)
    plain_pipe, plain_kwargs = adapters.prepare(JobAdapters(image=INIT, controlnets=[spec],
                                                            output_type="np"))
    plain = _run(plain_pipe, plain_kwargs)
    assert np.abs(guided - plain).max() > 1e-3  # PAG acts
    # With PAG at 0 and a sampler that draws no noise, the route is ControlNet img2img itself.
    scheduler = sd1["pipe"].scheduler
    sd1["pipe"].scheduler = DDIMScheduler.from_config(scheduler.config)
    try:
        pipe, kwargs = adapters.prepare(JobAdapters(image=INIT, pag_scale=3.0, controlnets=[spec],
                                                    output_type="np"))
        kwargs["pag_scale"] = 0.0
        routed = _run(pipe, kwargs)
        plain_pipe, plain_kwargs = adapters.prepare(JobAdapters(image=INIT, controlnets=[spec],
                                                                output_type="np"))
        assert np.allclose(routed, _run(plain_pipe, plain_kwargs), atol=1e-4)
    finally:
        sd1["pipe"].scheduler = scheduler
    # Strength 1 ignores the picture on both paths.
    for pag in (0.0, 3.0):
        outs = []
        for picture in (INIT, REFERENCE):
            pipe, kwargs = adapters.prepare(JobAdapters(image=picture, pag_scale=pag,
                                                        controlnets=[spec], output_type="np",
                                                        strength=1.0))
            outs.append(pipe(prompt="a red fox", strength=1.0, num_inference_steps=STEPS,
                             generator=torch.Generator().manual_seed(0), **kwargs).images)
        assert np.allclose(outs[0], outs[1], atol=1e-5), pag


def test_pag_with_inpaint_only_masked_on_sd1(sd1, adapters):
    outs = {}
    for pag in (0.0, 3.0):
        pipe, kwargs = adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(),
                                                    mask_blur=0, inpaint_full_res=True, padding=8,
                                                    pag_scale=pag))
        outs[pag] = _run(pipe, kwargs)
    assert type(pipe).__name__ == "StableDiffusionPAGInpaintPipeline"
    outside = np.asarray(_mask(box=(8, 8, 55, 55))) == 0
    init = np.asarray(INIT, dtype=np.float32) / 255
    assert np.abs(outs[3.0][0][outside] - init[outside]).max() < 2 / 255
    assert np.abs(outs[3.0] - outs[0.0]).max() > 1e-2


# -- inpainting ------------------------------------------------------------------------------


def test_inpaint_only_masked_keeps_the_rest(sd1, adapters):
    pipe, kwargs = adapters.prepare(JobAdapters("inpaint", image=[INIT, INIT], mask=_mask(),
                                                mask_blur=2, inpaint_full_res=True, padding=8))
    assert "Inpaint" in type(pipe).__name__ and pipe.unet is sd1["pipe"].unet
    assert kwargs["padding_mask_crop"] == 8 and kwargs["image"] is INIT
    out = _run(pipe, kwargs)
    init = np.asarray(INIT, dtype=np.float32) / 255
    outside = np.asarray(_mask(box=(10, 10, 53, 53))) == 0
    assert np.abs(out[0][outside] - init[outside]).max() < 2 / 255
    assert np.abs(out[0][~outside] - init[~outside]).mean() > 0.02


def test_inpaint_masked_content_options(sd1, adapters):
    results = {}
    for content in ("original", "fill", "latent noise", "latent nothing"):
        results[content] = _out(adapters, "inpaint", mask=_mask(), masked_content=content)
    inside = np.asarray(_mask()) > 0
    for a in results:
        for b in results:
            if a < b:
                assert np.abs(results[a][0][inside] - results[b][0][inside]).max() > 1e-2, (a, b)
    # overlay_original makes the unmasked area exact.
    pil = Image.fromarray((results["original"][0] * 255).round().astype("uint8"))
    pasted = np.asarray(overlay_original([pil], INIT, _mask(), blur=0)[0])
    assert np.array_equal(pasted[~inside], np.asarray(INIT)[~inside])


def test_inpaint_mask_inputs_and_errors(sd1, adapters):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((16, 16, 47, 47), fill=(255, 0, 0, 255))
    assert np.array_equal(np.asarray(mask_to_l(rgba)), np.asarray(_mask()))
    assert np.array_equal(np.asarray(mask_to_l(_mask().convert("RGB"))), np.asarray(_mask()))
    with pytest.raises(AdapterError, match="mask is 32x32 but the image is 64x64") as info:
        adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(32, (4, 4, 20, 20))))
    assert info.value.field == "mask"
    with pytest.raises(AdapterError, match="needs a mask"):
        adapters.prepare(JobAdapters("inpaint", image=INIT))
    with pytest.raises(AdapterError, match="empty"):
        adapters.prepare(JobAdapters("inpaint", image=INIT, mask=Image.new("L", (64, 64))))
    with pytest.raises(AdapterError, match="PIL"):
        adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(), inpaint_full_res=True,
                                     output_type="np"))
    with pytest.raises(AdapterError, match="masked content must be one of"):
        adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(), masked_content="blur"))


def test_inpaint_with_a_9_channel_unet(tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    components = get_dummy_components(TINY_SD)
    config = dict(components["unet"].config)
    config["in_channels"] = 9
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel.from_config(config).eval()
    pipe = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    adapters = Adapters(pipe, tmp_path)
    out = _out(adapters, "inpaint", mask=_mask(), masked_content="fill", pag_scale=1.0)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    with pytest.raises(AdapterError, match="standard models only"):
        adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(),
                                     masked_content="latent noise"))


# -- ControlNet ------------------------------------------------------------------------------


def test_canny_finds_the_rectangle_border_only():
    edges = canny_edges(_rectangle())
    border = np.zeros((64, 64), bool)
    border[18:47, 14:51] = True
    border[22:42, 18:46] = False  # the rectangle's flat inside
    assert edges.sum() > 80
    assert not edges[~border].any()  # nothing in the flat areas
    for row in (25, 30, 38):  # both vertical sides are found
        assert edges[row, 14:19].any() and edges[row, 45:51].any()
    for col in (25, 35):
        assert edges[18:23, col].any() and edges[42:47, col].any()
    assert not canny_edges(Image.new("RGB", (32, 32), (90, 90, 90))).any()
    picture = canny(_rectangle(), 50, 150)
    assert picture.mode == "RGB" and set(np.unique(np.asarray(picture))) == {0, 255}
    with pytest.raises(ValueError, match="must not exceed"):
        canny_edges(_rectangle(), 200, 100)


def test_canny_map_is_opencv_canny_with_its_defaults():
    """The map the canny ControlNets were trained on: cv2.Canny's L1 gradient, which on a
    textured picture finds far more edges than the L2 variant at the same thresholds."""
    import cv2

    from webui.engine.controlnet import control_image

    # Soft texture (blurred noise at 1.5x contrast), where the two gradient norms part ways.
    rng = np.random.RandomState(4)
    noise = Image.fromarray(rng.randint(0, 256, (768, 1024, 3), dtype=np.uint8))
    soft = np.asarray(noise.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    texture = Image.fromarray(np.clip(128 + (soft - 128) * 1.5, 0, 255).astype(np.uint8))
    pixels = np.asarray(texture)
    ours = np.asarray(canny(texture, 100, 200))[..., 0]
    assert np.array_equal(ours, cv2.Canny(pixels, 100, 200))
    l2 = cv2.Canny(pixels, 100, 200, L2gradient=True)
    assert (ours > 0).sum() > 1000 and (ours > 0).sum() > 2 * (l2 > 0).sum()
    # Through the ControlNet path: resized to the job's size first, then traced.
    mapped = np.asarray(control_image(texture, "canny", (512, 384), 100, 200))[..., 0]
    small = np.asarray(texture.convert("RGB").resize((512, 384), Image.BICUBIC))
    assert np.array_equal(mapped, cv2.Canny(small, 100, 200))


def test_controlnet_runs_and_shares_modules(sd1, adapters):
    spec = ControlNetSpec(str(sd1["controlnet"]), image=_rectangle(), preprocessor="canny",
                          scale=1.0)
    pipe, kwargs = adapters.prepare(JobAdapters(image=INIT, controlnets=[spec], output_type="np"))
    assert "ControlNet" in type(pipe).__name__
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name) is getattr(sd1["pipe"], name)
    with_control = _run(pipe, kwargs)
    assert np.abs(with_control - sd1["base"]).max() > 1e-3
    spec.scale = 0.0
    assert np.allclose(_out(adapters, controlnets=[spec]), sd1["base"], atol=1e-5)
    # Two at once, with their own scales and step ranges.
    specs = [ControlNetSpec(str(sd1["controlnet"]), _rectangle(), 1.0, 0.0, 0.5, "canny"),
             ControlNetSpec(str(sd1["controlnet_2"]), _rectangle(), 0.5, 0.2, 1.0)]
    pipe2, kwargs2 = adapters.prepare(JobAdapters(image=INIT, controlnets=specs, output_type="np"))
    assert kwargs2["controlnet_conditioning_scale"] == [1.0, 0.5]
    assert type(pipe2.controlnet).__name__ == "MultiControlNetModel"
    assert np.isfinite(_run(pipe2, kwargs2)).all()
    with pytest.raises(AdapterError, match="no control image"):
        adapters.prepare(JobAdapters(image=INIT,
                                     controlnets=[ControlNetSpec(str(sd1["controlnet"]))]))
    with pytest.raises(AdapterError, match="no ControlNet model"):
        adapters.prepare(JobAdapters(image=INIT,
                                     controlnets=[ControlNetSpec("/nowhere/cn", _rectangle())]))
    # Back to plain img2img: exactly the base output.
    assert adapters.prepare(JobAdapters(image=INIT))[0] is sd1["pipe"]
    assert np.array_equal(_out(adapters), sd1["base"])


def test_controlnet_single_file_and_inpaint(sd1, adapters, tmp_path):
    single = make_controlnet(sd1["pipe"], tmp_path / "cn_file", seed=0, single_file=True)
    (single.with_suffix(".json")).unlink()  # the config then comes from the resident UNet
    spec = ControlNetSpec(str(single), image=_rectangle(), preprocessor="canny")
    folder_spec = ControlNetSpec(str(sd1["controlnet"]), image=_rectangle(), preprocessor="canny")
    assert np.allclose(_out(adapters, controlnets=[spec]),
                       _out(adapters, controlnets=[folder_spec]), atol=1e-6)
    pipe, kwargs = adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(),
                                                controlnets=[spec], output_type="np"))
    assert "ControlNetInpaint" in type(pipe).__name__
    assert np.isfinite(_run(pipe, kwargs)).all()


def _original_layout_controlnet(folder, tmp_path):
    """A ControlNet folder written again as one original-layout file (keys under
    control_model.input_blocks / zero_convs / input_hint_block)."""
    from diffusers import ControlNetModel

    from tests.support.testing import save_controlnet_single_file

    path = save_controlnet_single_file(ControlNetModel.from_pretrained(str(folder)),
                                       tmp_path / "control_original.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert all(k.startswith("control_model.") for k in keys)
    assert any(k.startswith("control_model.zero_convs.") for k in keys)
    return path


def test_controlnet_original_layout_file(sd1, adapters, tmp_path):
    path = _original_layout_controlnet(sd1["controlnet"], tmp_path)
    from_file = ControlNetSpec(str(path), image=_rectangle(), preprocessor="canny")
    from_folder = ControlNetSpec(str(sd1["controlnet"]), image=_rectangle(), preprocessor="canny")
    assert np.array_equal(_out(adapters, controlnets=[from_file]),
                          _out(adapters, controlnets=[from_folder]))
    # Made for another model: its layer sizes do not fit this one.
    xl_cn = make_controlnet(build_pipeline(TINY_SDXL), tmp_path / "xl-cn")
    xl_file = _original_layout_controlnet(xl_cn, tmp_path / "xl")
    with pytest.raises(AdapterError, match="control_original.safetensors does not fit this model"):
        adapters.prepare(JobAdapters(image=INIT,
                                     controlnets=[ControlNetSpec(str(xl_file), _rectangle())]))
    assert np.array_equal(_out(adapters), sd1["base"])


# -- latents ---------------------------------------------------------------------------------


def test_latents_round_trip_and_latent_start(sd1, adapters, tmp_path):
    latents = _out(adapters, output_type="latent")
    latents = torch.from_numpy(latents) if isinstance(latents, np.ndarray) else latents
    assert latents.shape == (1, 4, 8, 8)
    path = save_latents(latents, tmp_path / "fox.safetensors", {"seed": 0, "prompt": "a red fox"})
    loaded, params = load_latents(path, channels=4, size=(64, 64))
    assert torch.equal(loaded, latents) and params == {"seed": 0, "prompt": "a red fox"}
    with pytest.raises(AdapterError, match="decode to 64x64 pixels but 128x96"):
        load_latents(path, size=(128, 96))
    with pytest.raises(AdapterError, match="16 channels"):
        check_latents(torch.zeros(1, 16, 8, 8))
    with pytest.raises(AdapterError, match="shaped"):
        check_latents(torch.zeros(4, 8, 8))
    # A second pass starting from the saved latents (chained img2img).
    out = _out(adapters, image=loaded, size=(64, 64))
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    with pytest.raises(AdapterError, match="latents"):
        adapters.prepare(JobAdapters(image=loaded, size=(128, 128)))
    with pytest.raises(AdapterError, match="not latents"):
        adapters.prepare(JobAdapters("inpaint", image=loaded, mask=_mask()))


# -- SDXL ------------------------------------------------------------------------------------


def test_sdxl_lora_pag_and_inpaint(xl, tmp_path):
    adapters = Adapters(xl["pipe"], xl["lora_dir"])
    try:
        styled = _out(adapters, loras=[("xl_style", 1.0)])
        assert np.abs(styled - xl["base"]).max() > 1e-2
        assert np.array_equal(_out(adapters, loras=[]), xl["base"])
        assert np.array_equal(_out(adapters, pag_scale=0.0), xl["base"])
        pag_pipe, kwargs = adapters.prepare(JobAdapters(image=INIT, pag_scale=3.0,
                                                        output_type="np"))
        assert type(pag_pipe).__name__ == "StableDiffusionXLPAGImg2ImgPipeline"
        assert pag_pipe.unet is xl["pipe"].unet and pag_pipe.text_encoder_2 is xl["pipe"].text_encoder_2
        assert np.abs(_run(pag_pipe, kwargs) - xl["base"]).max() > 1e-3
        pipe, kwargs = adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(),
                                                    mask_blur=2, inpaint_full_res=True, padding=8))
        assert type(pipe).__name__ == "StableDiffusionXLInpaintPipeline"
        out = _run(pipe, kwargs)
        outside = np.asarray(_mask(box=(10, 10, 53, 53))) == 0
        init = np.asarray(INIT, dtype=np.float32) / 255
        assert np.abs(out[0][outside] - init[outside]).max() < 2 / 255
        assert np.array_equal(_out(adapters), xl["base"])
    finally:
        adapters.unload_all()


def test_sdxl_ip_adapter_and_controlnet(xl, tmp_path):
    controlnet = make_controlnet(xl["pipe"], tmp_path / "cn")
    ip = make_ip_adapter(xl["pipe"], tmp_path / "ip", subfolder="sdxl_models")
    adapters = Adapters(xl["pipe"], xl["lora_dir"])
    try:
        spec = ControlNetSpec(str(controlnet), image=_rectangle(), preprocessor="canny")
        out = _out(adapters, controlnets=[spec], ip_adapter=IPAdapterSpec(str(ip), REFERENCE, 0.6))
        assert np.isfinite(out).all() and np.abs(out - xl["base"]).max() > 1e-3
        pipe, _ = adapters.prepare(JobAdapters(image=INIT, controlnets=[spec], pag_scale=3.0))
        assert type(pipe).__name__ == "StableDiffusionXLControlNetPAGImg2ImgPipeline"
        # The same ControlNet as one original-layout file (SDXL adds its label embedding).
        original = _original_layout_controlnet(controlnet, tmp_path)
        from_file = ControlNetSpec(str(original), image=_rectangle(), preprocessor="canny")
        assert np.array_equal(_out(adapters, controlnets=[from_file]),
                              _out(adapters, controlnets=[spec]))
        # No SDXL pipeline joins PAG, ControlNet and inpainting: refused, nothing changed.
        assert adapters.pag_limit("inpaint", controlnets=True)
        with pytest.raises(AdapterError, match="PAG cannot run here: .*SDXL"):
            adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(), controlnets=[spec],
                                         pag_scale=3.0, loras=[("xl_style", 1.0)]))
        assert not adapters.loaded_loras()
        pipe, _ = adapters.prepare(JobAdapters("inpaint", image=INIT, mask=_mask(),
                                               controlnets=[spec]))
        assert type(pipe).__name__ == "StableDiffusionXLControlNetInpaintPipeline"
    finally:
        adapters.unload_all()
    assert np.array_equal(_out(adapters), xl["base"])
