"""Single-file checkpoints: exact round trips of the tiny models, family detection, config lookup,
and a clear ModelError for every kind of file that cannot be loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from webui.engine.single_file import (
    detect_family,
    load_single_file,
    models_root,
    read_keys,
    write_config_folder,
)
from webui.errors import ModelError
from webui.tiny import TINY_SD, TINY_SDXL, build_pipeline

from tests.support.testing import save_single_file, to_original_state_dict


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from more threads, and on a busy CI machine oversubscribed threads
    # make each run ~10x slower; the previous setting is restored for the modules after this one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _img2img(pipe) -> np.ndarray:
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8"))
    return pipe(
        "a red fox", image=image, strength=0.75, num_inference_steps=3,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images


def _assert_same_weights(a, b):
    for name, module in a.components.items():
        if isinstance(module, torch.nn.Module):
            mine, theirs = module.state_dict(), getattr(b, name).state_dict()
            assert mine.keys() == theirs.keys(), name
            for key in mine:
                assert torch.equal(mine[key], theirs[key]), f"{name}.{key}"


# SD2 differs from SD1 only in its text-encoder layout, so the SD1 tiny model stands in for it.
@pytest.fixture(scope="module", params=[(TINY_SD, "sd1"), (TINY_SD, "sd2"), (TINY_SDXL, "sdxl")],
                ids=lambda p: p[1])
def tiny(request, tmp_path_factory):
    """(pipeline, checkpoint path, config folder, family) for one family, built once per module."""
    kind, family = request.param
    root = tmp_path_factory.mktemp(family)
    pipe = build_pipeline(kind)
    checkpoint = save_single_file(pipe, root / f"{family}.safetensors", family=family)
    config = write_config_folder(pipe, root / "config")
    return pipe, checkpoint, config, family


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    pipe = build_pipeline(TINY_SD)
    return pipe, save_single_file(pipe, root / "tiny.safetensors")


def test_round_trip_is_exact(tiny):
    pipe, checkpoint, config, _ = tiny
    loaded = load_single_file(checkpoint, config_dir=config)
    assert type(loaded) is type(pipe)
    _assert_same_weights(pipe, loaded)
    for module in loaded.components.values():
        if isinstance(module, torch.nn.Module):
            assert not module.training
    assert np.array_equal(_img2img(pipe), _img2img(loaded))


def test_safety_checker_is_off(sd1, tmp_path):
    pipe, checkpoint = sd1
    loaded = load_single_file(checkpoint, config_dir=write_config_folder(pipe, tmp_path / "c"))
    assert loaded.safety_checker is None
    assert loaded.config.requires_safety_checker is False


def test_config_folder_has_no_weights(tiny):
    config = tiny[2]
    names = {p.name for p in config.rglob("*") if p.is_file()}
    assert "model_index.json" in names
    assert (config / "unet" / "config.json").is_file()
    assert (config / "text_encoder" / "config.json").is_file()
    assert not [n for n in names if n.endswith((".safetensors", ".bin", ".pt"))]


def test_detects_each_family(tiny):
    _, checkpoint, _, family = tiny
    assert detect_family(read_keys(checkpoint)) == family


def test_unknown_layout_is_refused():
    with pytest.raises(ModelError, match="not a Stable Diffusion"):
        detect_family(["down_blocks.0.resnets.0.conv1.weight"])


@pytest.mark.parametrize("folder", ["family", "stem"])
def test_configs_found_under_models_root(sd1, tmp_path, folder):
    pipe, checkpoint = sd1
    target = tmp_path / "models" / "Stable-diffusion" / "anime" / "my-model.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoint, target)
    assert models_root(target) == tmp_path / "models"
    write_config_folder(pipe, tmp_path / "models" / "configs" / ("sd1" if folder == "family" else "my-model"))
    loaded = load_single_file(target)
    _assert_same_weights(pipe, loaded)


def test_torch_dtype_is_applied(sd1, tmp_path):
    pipe, checkpoint = sd1
    loaded = load_single_file(
        checkpoint, config_dir=write_config_folder(pipe, tmp_path / "c"), torch_dtype=torch.bfloat16
    )
    assert loaded.unet.dtype == torch.bfloat16
    assert loaded.text_encoder.dtype == torch.bfloat16


def test_offline_without_configs_names_family_and_folder(sd1, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    # An empty hub cache and offline mode, whatever the machine or environment has.
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    target = tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copy(sd1[1], target)
    with pytest.raises(ModelError) as info:
        load_single_file(target)
    message = str(info.value)
    assert "sd1" in message and "SD 1.x" in message
    assert "models/configs/sd1" in message
    assert "internet" in message


def test_config_folder_without_model_index_is_refused(sd1, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="model_index.json"):
        load_single_file(sd1[1], config_dir=tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ModelError, match="pickle") as info:
        load_single_file(path)
    assert "safetensors" in str(info.value)


def test_truncated_file_is_refused(sd1, tmp_path):
    data = sd1[1].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_single_file(cut)


def test_lora_file_is_refused(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }, str(path))
    with pytest.raises(ModelError, match="LoRA") as info:
        load_single_file(path)
    assert "models/Lora/" in str(info.value)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "fake.safetensors"
    path.write_bytes(np.random.RandomState(1).bytes(4096))
    with pytest.raises(ModelError, match="not a valid .safetensors"):
        load_single_file(path)


@pytest.mark.parametrize("dropped, detail", [
    ("first_stage_model.", "AutoencoderKL"),  # a checkpoint shipped without its VAE
    ("model.diffusion_model.out.2.bias", "weights are missing"),  # one weight short
    ("cond_stage_model.transformer.text_model.final_layer_norm.", "text_encoder"),  # never half-built
])
def test_incomplete_checkpoint_is_refused(sd1, tmp_path, dropped, detail):
    pipe, _ = sd1
    state = {k: v for k, v in to_original_state_dict(pipe).items() if not k.startswith(dropped)}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match="partial.safetensors is incomplete") as info:
        load_single_file(path, config_dir=write_config_folder(pipe, tmp_path / "c"))
    assert detail in str(info.value)


# -- family and prediction type ------------------------------------------------------------------
def test_the_engine_keeps_the_family_the_file_declares(tiny, tmp_path):
    """SD 2.x files are SD 2.x everywhere (the tiny SD 2.x file is shaped like SD 1.x, so the
    family must come from the file, not from the pipeline's class)."""
    from webui.engine.core import Engine
    from webui.params import make

    pipe, checkpoint, config, family = tiny
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(checkpoint, models / "Stable-diffusion" / "mine.safetensors")
    shutil.copytree(config, models / "configs" / family)
    engine = Engine(models_dir=models, outputs_dir=tmp_path / "out", device="cpu", model="mine")
    try:
        rng = np.random.RandomState(1)
        init = Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8"))
        settings = dict(steps=2, strength=0.5, seed=1, pag_scale=0)
        plain = engine.generate(make(prompt="a fox", **settings), init, save=False)
        assert engine.family == family and engine.adapters.family == family
        # The prompt syntax works for every family (SD 2.x reads the last layer, as SD 1.x).
        weighted = engine.generate(make(prompt="a (fox:1.4) BREAK snow", **settings), init,
                                   save=False)
        assert weighted.images[0].image.tobytes() != plain.images[0].image.tobytes()
    finally:
        engine.unload()


def _sd2(tmp_path, name="v.safetensors", **kwargs):
    pipe = build_pipeline(TINY_SD)
    path = save_single_file(pipe, tmp_path / name, family="sd2", **kwargs)
    return path, write_config_folder(pipe, tmp_path / "config")


@pytest.mark.parametrize("how", ["metadata", "marker", "yaml"])
def test_v_prediction_files_get_a_v_prediction_scheduler(tmp_path, how):
    if how == "metadata":
        path, config = _sd2(tmp_path, metadata={"modelspec.prediction_type": "v"})
    elif how == "marker":
        path, config = _sd2(tmp_path, markers=("v_pred",))
    else:
        path, config = _sd2(tmp_path)
        path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    loaded = load_single_file(path, config_dir=config)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    # It reaches the sampler the engine builds from that config, and changes the picture.
    from webui import schedulers

    built = schedulers.build("DPM++ 2M Karras", dict(loaded.scheduler.config))
    assert built.config.prediction_type == "v_prediction"
    plain = load_single_file(_sd2(tmp_path / "plain")[0], config_dir=config)
    assert plain.scheduler.config.prediction_type == "epsilon"
    assert not np.array_equal(_img2img(loaded), _img2img(plain))


def test_zero_terminal_snr_marker_rescales_betas(tmp_path):
    path, config = _sd2(tmp_path, metadata={"modelspec.prediction_type": "v"}, markers=("ztsnr",))
    scheduler = load_single_file(path, config_dir=config).scheduler.config
    assert scheduler.rescale_betas_zero_snr is True and scheduler.timestep_spacing == "trailing"


def test_velocity_is_told_from_noise_by_one_step():
    """The check for undescribed full-size SD 2.x files, on stand-in UNets that answer as a
    velocity and a noise predictor do at the last timestep."""
    from types import SimpleNamespace

    from webui.engine.single_file import _predicts_velocity

    class StandIn(torch.nn.Module):
        def __init__(self, sign):
            super().__init__()
            self.sign = sign
            self.weight = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
            self.config = SimpleNamespace(in_channels=4, cross_attention_dim=1024)

        @property
        def dtype(self):
            return self.weight.dtype

        @property
        def device(self):
            return self.weight.device

        def forward(self, x, t, context):
            assert self.weight.dtype == torch.float32  # run in fp32 ...
            return SimpleNamespace(sample=self.sign * x * self.weight)

    velocity, noise = StandIn(-2.0), StandIn(1.0)
    assert _predicts_velocity(velocity) and not _predicts_velocity(noise)
    assert velocity.dtype == torch.float16  # ... and cast back
