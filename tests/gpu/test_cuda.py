"""What only a CUDA GPU can show: fp16/bf16 jobs, CPU offload with the derived pipelines, a real
out-of-memory followed by a good job, every adapter in one CUDA job, and a soak with memory back
at its baseline. Skipped where CUDA is absent (the CI machine has no GPU); run on a lent GPU as
the GPU notes of the project's shared folder say. The models are tiny or random-weight ones in
the real shapes: no download.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (these check what the CPU cannot)")

from webui.engine import Engine, JobRequest, OutOfMemory  # noqa: E402
from webui.params import make  # noqa: E402
from webui.tiny import build_pipeline  # noqa: E402


def picture(width: int = 512, height: int = 512, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    image = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width // 2, height // 2),
                                    fill=(250, 250, 250))
    return image


def spread(image: Image.Image) -> float:
    """Pixel spread: 0 for a flat picture (an fp16 overflow decodes to flat black)."""
    return float(np.asarray(image.convert("RGB"), dtype=np.float32).std())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with a tiny LoRA, IP-Adapter and ControlNet for the tiny SD model."""
    from tests.support.tiny_adapters import make_controlnet, make_ip_adapter, make_lora

    root = tmp_path_factory.mktemp("gpu-models")
    pipe = build_pipeline("tiny-random")
    (root / "Lora").mkdir(parents=True)
    make_lora(pipe, root / "Lora" / "film.safetensors", seed=1)
    make_lora(pipe, root / "Lora" / "grain.safetensors", rank=2, seed=5, fmt="kohya")
    make_ip_adapter(pipe, root / "IP-Adapter" / "tiny-ip", seed=3)
    make_controlnet(pipe, root / "ControlNet" / "edges", seed=4)
    return root


@pytest.fixture
def engine(models, tmp_path):
    engine = Engine(models_dir=models, outputs_dir=tmp_path / "outputs", device="cuda")
    yield engine
    engine.cancel_all()
    engine.unload()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_jobs_on_a_full_size_model(engine, dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = engine.generate(JobRequest(make(model="random-sd15", dtype=dtype, steps=4,
                                             strength=0.6, seed=3, width=768, height=512),
                                        picture(768, 512), save=False))
    assert result.images[0].image.size == (768, 512)
    assert f"Dtype: {dtype}" in result.images[0].infotext
    assert spread(result.images[0].image) > 0  # not an overflow's flat picture
    assert engine.memory_status()["cuda"]["allocated"] > 0


@pytest.mark.parametrize("kind", ["pag", "inpaint", "controlnet"])
def test_cpu_offload_with_the_derived_pipelines(engine, kind):
    settings = {"cpu_offload": "on", "steps": 4, "strength": 0.6, "seed": 5,
                "pag_scale": 3.0 if kind == "pag" else 0.0}
    extra = {}
    if kind == "inpaint":
        mask = Image.new("L", (512, 512), 0)
        ImageDraw.Draw(mask).rectangle((128, 128, 383, 383), fill=255)
        extra["mask"] = mask
    if kind == "controlnet":
        settings["controlnets"] = [{"model": "edges", "preprocessor": "canny"}]
    result = engine.generate(JobRequest(make(**settings), picture(), save=False, **extra))
    assert result.images[0].image.size == (512, 512)
    assert spread(result.images[0].image) > 0
    # The same job without offload gives the same picture (offload moves weights, not maths).
    plain = engine.generate(JobRequest(make(**{**settings, "cpu_offload": "off"}), picture(),
                                       save=False, **extra))
    difference = np.abs(np.asarray(plain.images[0].image, dtype=np.int16)
                        - np.asarray(result.images[0].image, dtype=np.int16)).max()
    assert difference <= 8


def test_a_real_out_of_memory_is_advice_and_the_next_job_runs(engine):
    engine.generate(JobRequest(make(model="random-sdxl", steps=1, strength=0.5), picture(),
                               save=False))
    free, total = torch.cuda.mem_get_info()
    used = total - free
    # Let this process have just what it holds now plus 1 GiB: a 2048x2048 SDXL job needs more.
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 2**30) / total))
    try:
        with pytest.raises(OutOfMemory, match="out of GPU memory"):
            engine.generate(JobRequest(make(model="random-sdxl", steps=2, strength=0.5,
                                            width=2048, height=2048, batch_size=4,
                                            attention_slicing="off", vae_tiling="off",
                                            cpu_offload="off"),
                                       picture(2048, 2048), save=False))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    after = engine.generate(JobRequest(make(model="random-sdxl", steps=2, strength=0.5),
                                       picture(1024, 1024), save=False))
    assert after.images[0].image.size == (1024, 1024)


def test_every_adapter_in_one_cuda_job(engine):
    settings = dict(steps=4, strength=0.6, seed=9, pag_scale=3.0, ip_adapter="tiny-ip",
                    loras=[{"name": "film", "weight": 0.8}],
                    controlnets=[{"model": "edges", "preprocessor": "canny"}])
    result = engine.generate(JobRequest(make(**settings), picture(), ip_image=picture(seed=4),
                                        save=False))
    text = result.images[0].infotext
    assert "PAG scale: 3" in text and "IP-Adapter: tiny-ip" in text
    assert "film" in text and "ControlNet 0" in text
    alone = engine.generate(JobRequest(make(steps=4, strength=0.6, seed=9, pag_scale=0.0),
                                       picture(), save=False))
    assert not np.array_equal(np.asarray(alone.images[0].image),
                              np.asarray(result.images[0].image))


def test_a_soak_of_twenty_jobs_returns_to_its_memory_baseline(engine):
    request = JobRequest(make(model="random-sd15", steps=4, strength=0.6, seed=1), picture(),
                         save=False)
    engine.generate(request)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    for n in range(20):
        settings = dict(model="random-sd15", steps=4, strength=0.6, seed=n,
                        pag_scale=3.0 if n % 2 else 0.0, width=512 + 64 * (n % 3), height=512)
        engine.generate(JobRequest(make(**settings), picture(512 + 64 * (n % 3), 512),
                                   save=False))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= baseline + 64 * 2**20


def test_the_compiled_unet_and_vae_with_cuda_graphs(models, tmp_path):
    engine = Engine(models_dir=models, outputs_dir=tmp_path / "outputs", device="cuda",
                    compile="on", cache_dir=tmp_path / "cache")
    try:
        def job(**settings):
            values = dict(model="random-sd15", steps=10, strength=0.8, seed=2, pag_scale=0.0)
            values.update(settings)
            return engine.generate(JobRequest(make(**values), picture(), save=False))

        eager = job()
        assert "compiling for 512x512" in eager.notice
        assert engine.wait_for_compiles(1800)
        compiled = job()
        fast = engine._fast
        assert fast.job.compiled_calls == compiled.effective_steps and fast.job.eager_calls == 0
        # SD 1.5's VAE in float16 is compiled too (encoder and decoder, without CUDA graphs).
        assert fast.job.vae_compiled_calls == 2 and fast.job.vae_eager_calls == 0
        difference = np.abs(np.asarray(eager.images[0].image, dtype=np.int16)
                            - np.asarray(compiled.images[0].image, dtype=np.int16))
        assert difference.mean() < 2 and difference.max() <= 32  # fp16: close, not exact
        compiles = fast.compiles
        for settings in ({"seed": 7}, {"strength": 0.5}, {"guidance_scale": 4.0},
                         {"scheduler": "DPM++ 2M Karras"}, {"steps": 20}):
            job(**settings)
            assert fast.job.eager_calls == 0 and fast.job.vae_eager_calls == 0, settings
        assert fast.compiles == compiles
        assert fast.cache_file.exists()
    finally:
        engine.unload()


def test_lora_hotswap_into_the_cuda_graphs(models, tmp_path):
    """One LoRA compiles once; other LoRAs and weights run the same CUDA graphs (their tensors
    are written in place) and give the eager engine's pictures."""
    fast_engine = Engine(models_dir=models, outputs_dir=tmp_path / "outputs", device="cuda",
                         compile="on", cache_dir=tmp_path / "cache", lora_rank=8)
    eager_engine = Engine(models_dir=models, outputs_dir=tmp_path / "outputs", device="cuda",
                          compile="off")

    def job(engine, lora, weight):
        params = make(model="tiny-random", steps=6, strength=0.8, seed=2, pag_scale=0.0,
                      loras=[{"name": lora, "weight": weight}])
        return np.asarray(engine.generate(JobRequest(params, picture(64, 64), save=False))
                          .images[0].image, dtype=np.int16)

    try:
        first = fast_engine.generate(JobRequest(make(
            model="tiny-random", steps=6, strength=0.8, seed=2, pag_scale=0.0,
            loras=[{"name": "film", "weight": 0.7}]), picture(64, 64), save=False))
        assert "compiling for 64x64 with LoRA" in first.notice
        assert fast_engine.wait_for_compiles(1800)
        fast = fast_engine._fast
        compiles = fast.compiles
        for lora, weight in (("film", 0.7), ("film", 0.2), ("grain", 1.0), ("grain", -0.5)):
            calls = fast.graph_calls
            compiled = job(fast_engine, lora, weight)
            assert fast.job.eager_calls == 0 and fast.graph_calls - calls == \
                fast.job.compiled_calls > 0, (lora, weight)
            assert np.abs(compiled - job(eager_engine, lora, weight)).max() <= 8, (lora, weight)
        assert fast.compiles == compiles
    finally:
        fast_engine.unload()
        eager_engine.unload()


def test_tiny_vae_previews_in_half_precision(tmp_path):
    """--preview-decoder tiny on CUDA: an fp16 job's previews come from the tiny VAE (in the
    published shape, random weights), at the picture's size up to 512 px, and are not flat."""
    from diffusers import AutoencoderTiny

    AutoencoderTiny().save_pretrained(tmp_path / "models" / "VAE-approx" / "taesd")
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cuda", model="tiny-random", preview_decoder="tiny")
    seen = []
    try:
        result = engine.generate(
            JobRequest(make(steps=6, strength=1.0, seed=2, dtype="fp16", width=512, height=384,
                            pag_scale=0.0), picture(512, 384), save=False),
            on_progress=lambda p: p.preview is not None and seen.append(p.preview))
        _, why = engine.step_previewer()
    finally:
        engine.unload()
    assert why == "" and "tiny VAE" not in (result.notice or "") and seen
    assert all(p.size == (512, 384) for p in seen)
    assert all(spread(p) > 0 for p in seen)


def test_draft_mode_on_a_full_size_model_in_fp16(engine):
    """Draft mode on the real SD 1.5 layer shapes in fp16: the reused deep features keep the
    picture close to the full job's and not flat."""
    settings = dict(model="random-sd15", dtype="fp16", steps=12, strength=0.8, seed=4,
                    width=512, height=512, pag_scale=3.0)
    full = engine.generate(JobRequest(make(**settings), picture(), save=False))
    drafted = engine.generate(JobRequest(make(**settings, draft=2), picture(), save=False))
    assert "Draft mode (lossy)" in drafted.notice and spread(drafted.images[0].image) > 0
    a, b = (np.asarray(r.images[0].image, np.float32) for r in (full, drafted))
    assert 0 < np.abs(a - b).mean() < 64
