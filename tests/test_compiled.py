"""The compiled UNet and VAE (engine/compiled.py) on the CPU inductor backend, with tiny-random.

Compiling costs tens of seconds on the CPU, so one engine compiles the UNet four times in all
(64x64, 96x64, 64x64 with PAG, 64x64 with LoRA) and the VAE's encoder and decoder for the two
sizes; every other check reuses those graphs or never compiles: the compiled output matches
eager; a new size runs eager at once and compiles in the background; changing prompt, seed,
strength, CFG, steps, sampler or batch count compiles nothing; VAE tiling runs the VAE eager;
the fused QKV projections are views of the weights (no memory added) and are joined again
after a move splits them; a LoRA compiles once (64x64 with LoRA) and every other LoRA and
weight hotswaps into that graph; LoRAs the hot slot cannot take run eager with a notice; the
start-up warm-up compiles the default job; a failing compile stays eager; a corrupt cache
file is rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import webui.engine.lora
from webui.engine import Engine, JobRequest
from webui.engine import compiled
from webui.params import make
from webui.tiny import build_pipeline

from tests.support.tiny_adapters import make_lora

COMPILE_TIMEOUT = 600


# The hot slot's reserved rank in these tests: film (rank 4) and grain (rank 2) fit, wide (16)
# does not.
HOT_RANK = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled")
    loras = root / "models" / "Lora"
    loras.mkdir(parents=True)
    pipe = build_pipeline("tiny-random")
    make_lora(pipe, loras / "film.safetensors")
    make_lora(pipe, loras / "grain.safetensors", rank=2, seed=5, fmt="kohya")
    make_lora(pipe, loras / "wide.safetensors", rank=16, seed=7)
    make_lora(pipe, loras / "film-te.safetensors", seed=9, text_encoder=True)
    make_lora(pipe, loras / "feed.safetensors", seed=11, targets=("ff.net.2",))
    return root


@pytest.fixture(scope="module")
def fast_engine(models):
    engine = Engine(models_dir=models / "models", outputs_dir=models / "outputs", device="cpu",
                    compile="on", cache_dir=models / "cache", lora_rank=HOT_RANK)
    yield engine
    engine.cancel_all()
    engine.unload()


@pytest.fixture(scope="module")
def eager_engine(models):
    """The same models run eager: what every compiled picture is compared with."""
    engine = Engine(models_dir=models / "models", outputs_dir=models / "outputs", device="cpu",
                    compile="off")
    yield engine
    engine.unload()


def picture(width: int = 64, height: int = 64) -> Image.Image:
    image = Image.radial_gradient("L").convert("RGB").resize((width, height))
    image.paste((200, 40, 30), (width // 4, height // 4, width // 2, height // 2))
    return image


def job(engine, width: int = 64, height: int = 64, **settings):
    values = {"steps": 4, "strength": 0.5, "seed": 3, "pag_scale": 0.0, "prompt": "a fox"}
    values.update(settings)
    return engine.generate(JobRequest(make(**values), picture(width, height), save=False))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_a_size_runs_eager_while_it_compiles_then_runs_compiled_alike(fast_engine):
    eager = job(fast_engine)
    fast = fast_engine._fast
    # The UNet, the VAE's encoder (the init picture) and its decoder (the result).
    assert ("compiling for 64x64, VAE decoder 64x64, VAE encoder 64x64 (eager until ready)"
            in eager.notice)
    assert fast.job.compiled_calls == 0 and fast.job.eager_calls == 2
    assert fast.job.vae_compiled_calls == 0 and fast.job.vae_eager_calls == 2
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    assert fast_engine.compile_status()["ready"] == ["64x64", "VAE decoder 64x64",
                                                     "VAE encoder 64x64"]
    unet_calls, vae_calls = fast.graph_calls, fast.vae_graph_calls
    again = job(fast_engine)
    assert fast.job.compiled_calls == 2 and fast.job.eager_calls == 0
    assert fast.job.vae_compiled_calls == 2 and fast.job.vae_eager_calls == 0
    # The graphs' own runs: no guard failed over to eager.
    assert fast.graph_calls - unet_calls == 2 and fast.vae_graph_calls - vae_calls == 2
    assert fast_engine.compile_status()["last_job"] == {  # what the benchmark reports
        "unet_compiled": 2, "unet_eager": 0, "vae_compiled": 2, "vae_eager": 0}
    assert "compiling" not in again.notice
    assert np.abs(pixels(again) - pixels(eager)).max() <= 2
    assert fast.cache_file.exists() and fast.cache_file.stat().st_size > 0


def test_settings_that_change_only_numbers_never_recompile(fast_engine):
    job(fast_engine)
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    fast = fast_engine._fast
    compiles, before = fast.compiles, graphs()
    for settings in ({"prompt": "a lighthouse", "negative_prompt": "blurry"}, {"seed": 99},
                     {"strength": 0.8}, {"guidance_scale": 3.5}, {"steps": 9},
                     {"scheduler": "DPM++ 2M Karras"}, {"scheduler": "Euler"},
                     {"batch_count": 2}):
        calls = fast.graph_calls
        result = job(fast_engine, **settings)
        # (the view covers the job's last batch; graph_calls, the graphs' own runs, all)
        assert fast.job.eager_calls == 0 and fast.job.vae_eager_calls == 0, settings
        assert fast.graph_calls - calls >= result.effective_steps, settings
        assert fast.job.compiled_calls == result.effective_steps, settings
    assert fast.compiles == compiles and graphs() == before


def test_vae_tiling_runs_the_vae_eager_and_the_unet_compiled(fast_engine, eager_engine):
    job(fast_engine)
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    fast = fast_engine._fast
    compiles, vae_calls = fast.compiles, fast.vae_graph_calls
    tiled = job(fast_engine, vae_tiling="on")
    assert fast.vae_graph_calls == vae_calls and fast.job.vae_compiled_calls == 0
    assert fast.job.compiled_calls == 2 and fast.job.eager_calls == 0
    assert np.abs(pixels(tiled) - pixels(job(eager_engine, vae_tiling="on"))).max() <= 2
    job(fast_engine)  # tiling off again: the VAE's graphs
    assert fast.job.vae_compiled_calls == 2 and fast.compiles == compiles


def test_a_new_size_compiles_once_in_the_background(fast_engine):
    job(fast_engine)
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    fast = fast_engine._fast
    compiles = fast.compiles
    first = job(fast_engine, 96, 64)
    assert first.images[0].image.size == (96, 64)
    assert ("compiling for 96x64, VAE decoder 96x64, VAE encoder 96x64 (eager until ready)"
            in first.notice)
    job(fast_engine, 96, 64, seed=5)  # while it compiles: eager again, not queued twice
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    assert fast.compiles == compiles + 3  # the UNet, the VAE's encoder and its decoder
    job(fast_engine, 96, 64, seed=6)
    assert fast.job.compiled_calls == 2 and fast.job.eager_calls == 0
    assert fast.job.vae_compiled_calls == 2 and fast.job.vae_eager_calls == 0


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_fused_qkv_projections_are_views_and_a_move_that_splits_them_is_joined_again(
        fast_engine, eager_engine):
    job(fast_engine)
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    fast, unet = fast_engine._fast, fast_engine._pipe.unet
    fused = fast._fused
    assert {names for names, _ in fused.values()} == {("to_q", "to_k", "to_v"), ("to_k", "to_v")}
    twin = next(t.module for key, t in fast._unet.twins.items() if key[1] == 0)
    for name, (names, joined) in fused.items():
        module = unet.get_submodule(name)
        assert all(shares_storage(getattr(module, n).weight, joined.weight) for n in names)
        # The plain twin reads them as one matrix with the library's fused processor.
        assert type(twin.get_submodule(name).processor).__name__ == "FusedAttnProcessor2_0"
    # A move of each weight alone (as model CPU offload makes) splits the views; the next
    # job joins them again, and its graphs read the joined weights.
    for parameter in unet.parameters():
        parameter.data = parameter.data.clone()
    assert not any(shares_storage(unet.get_submodule(name).to_k.weight, joined.weight)
                   for name, (_, joined) in fused.items())
    calls = fast.graph_calls
    result = job(fast_engine, seed=8)
    assert fast.graph_calls - calls == 2 and fast.job.eager_calls == 0
    assert np.abs(pixels(result) - pixels(job(eager_engine, seed=8))).max() <= 2
    for name, (names, joined) in fused.items():
        module = unet.get_submodule(name)
        assert all(shares_storage(getattr(module, n).weight, joined.weight) for n in names)


def test_fused_qkv_projections_cost_no_memory():
    unet = build_pipeline("tiny-random").unet

    def storage_bytes(tensors) -> int:
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in tensors}.values())

    before = storage_bytes(unet.parameters())
    fast = compiled.FastPath(unet, "cpu", None, "unet-test")
    try:
        joined = [t for _, linear in fast._fused.values() for t in linear.parameters()]
        assert joined and storage_bytes([*unet.parameters(), *joined]) == before
    finally:
        fast.close()


def test_a_lora_compiles_once_then_every_lora_and_weight_hotswaps_into_it(fast_engine,
                                                                        eager_engine,
                                                                        monkeypatch):
    film = [{"name": "film", "weight": 0.7}]
    first = job(fast_engine, loras=film)
    fast = fast_engine._fast
    assert "compiling for 64x64 with LoRA (eager until ready)" in first.notice
    assert "compiled UNet not used" not in first.notice
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    assert "64x64 with LoRA" in fast_engine.compile_status()["ready"]
    compiles, before = fast.compiles, graphs()
    plain = pixels(job(eager_engine))
    # The LoRA files the compiled engine reads itself (keys, checks): each on first sight only.
    opened, reads = [], []
    real_open = webui.engine.lora.safe_open
    monkeypatch.setattr(webui.engine.lora, "safe_open",
                        lambda path, **kw: opened.append(Path(path).name) or real_open(path, **kw))
    for loras in (film, [{"name": "film", "weight": 0.3}], [{"name": "film", "weight": -1.5}],
                  [{"name": "grain", "weight": 1.0}], [{"name": "grain", "weight": 0.6}], film):
        calls, seen = fast.graph_calls, len(opened)
        result = job(fast_engine, loras=loras)
        reads += opened[seen:]
        # Every UNet call ran a compiled graph (graph_calls counts the graph's own runs, so a
        # guard that failed and ran eager would show here).
        assert fast.job.eager_calls == 0 and fast.graph_calls - calls == 2, loras
        expected = pixels(job(eager_engine, loras=loras))
        assert np.abs(pixels(result) - expected).max() <= 2, loras
        assert np.abs(expected - plain).max() > 10, loras  # the LoRA shows in the picture
        assert f'LoRAs: "{loras[0]["name"]}:' in result.images[0].infotext
    assert fast.compiles == compiles and graphs() == before
    assert fast_engine.adapters.loras.load_calls == 3  # film, grain, film again: no more
    assert set(reads) == {"grain.safetensors"}
    # Without a LoRA: the plain graph, and not a trace of the slot's LoRA in the picture.
    calls = fast.graph_calls
    assert np.abs(pixels(job(fast_engine)) - plain).max() <= 2
    assert fast.graph_calls - calls == 2 and fast.job.eager_calls == 0


@pytest.mark.parametrize("loras, why", [
    ([{"name": "wide", "weight": 0.8}], "LoRA 'wide' has rank 16, above the 8 reserved"),
    ([{"name": "film-te", "weight": 0.8}], "LoRA 'film-te' also changes the text encoder"),
    ([{"name": "film", "weight": 0.5}, {"name": "grain", "weight": 0.5}],
     "LoRA jobs with more than one LoRA run eager"),
])
def test_loras_the_slot_cannot_take_run_eager_and_say_so(fast_engine, eager_engine, loras, why):
    fast = fast_engine._fast
    compiles = fast.compiles
    result = job(fast_engine, loras=loras)
    assert f"compiled UNet not used: {why}" in result.notice
    assert fast.job.compiled_calls == 0
    assert np.abs(pixels(result) - pixels(job(eager_engine, loras=loras))).max() <= 2
    # The slot is still there for the next one-LoRA job, and so are its graphs.
    film = [{"name": "film", "weight": 0.7}]
    again = job(fast_engine, loras=film)
    if "64x64 with LoRA" in fast_engine.compile_status()["ready"]:
        assert fast.job.compiled_calls == 2 and fast.job.eager_calls == 0
    assert np.abs(pixels(again) - pixels(job(eager_engine, loras=film))).max() <= 2
    job(fast_engine)  # no LoRA: compiled as before
    assert fast.job.compiled_calls == 2
    assert fast.compiles == compiles


def test_a_lora_for_layers_the_slot_lacks_runs_eager_and_the_next_lora_is_right(fast_engine,
                                                                               eager_engine):
    film, feed = [{"name": "film", "weight": 0.7}], [{"name": "feed", "weight": 1.0}]
    job(fast_engine, loras=film)  # film in the slot (to_q, to_k, to_v, to_out.0)
    fast = fast_engine._fast
    result = job(fast_engine, loras=feed)
    assert "compiled UNet not used: LoRA 'feed' could not be hot-swapped" in result.notice
    assert fast.job.compiled_calls == 0
    assert np.abs(pixels(result) - pixels(job(eager_engine, loras=feed))).max() <= 2
    # The failed swap leaves nothing of feed behind: film's picture is film's alone.
    assert np.abs(pixels(job(fast_engine, loras=film)) -
                  pixels(job(eager_engine, loras=film))).max() <= 2
    again = job(fast_engine, loras=feed)  # known not to fit: eager again, same reason
    assert "compiled UNet not used: LoRA 'feed' could not be hot-swapped" in again.notice
    assert np.abs(pixels(again) - pixels(result)).max() == 0


def test_lora_rank_is_checked_and_zero_runs_lora_jobs_eager(models, eager_engine):
    for bad in (-1, 2000, 2.5, True, "64"):
        with pytest.raises(ValueError, match="lora_rank must be a whole number from 0 to 1024"):
            Engine(models_dir=models / "models", device="cpu", compile="on", lora_rank=bad)
    engine = Engine(models_dir=models / "models", outputs_dir=models / "outputs", device="cpu",
                    compile="on", cache_dir=models / "cache-0", lora_rank=0)
    try:
        film = [{"name": "film", "weight": 0.7}]
        result = job(engine, loras=film)
        assert "compiled UNet not used: LoRA hotswap is off (--lora-rank 0)" in result.notice
        assert engine._fast.job.compiled_calls == 0
        # Nothing of the UNet queued to compile (the VAE's parts are, LoRA or not).
        assert all(label.startswith("VAE") for label in engine.compile_status()["compiling"])
        assert np.abs(pixels(result) - pixels(job(eager_engine, loras=film))).max() <= 2
    finally:
        engine.wait_for_compiles(COMPILE_TIMEOUT)  # no compile left running into later tests
        engine.unload()


def test_start_up_compiles_the_default_job_in_the_background(fast_engine):
    eager_pag = job(fast_engine, pag_scale=3.0) if "64x64 with PAG" not in \
        fast_engine.compile_status()["ready"] else None
    assert fast_engine.warm_compile(64, 64) == "64x64"
    assert fast_engine.wait_for_compiles(COMPILE_TIMEOUT)
    assert "64x64 with PAG" in fast_engine.compile_status()["ready"]  # the page's default PAG
    clicked = job(fast_engine, pag_scale=3.0)
    assert fast_engine._fast.job.compiled_calls == 2 and fast_engine._fast.job.eager_calls == 0
    if eager_pag is not None:
        assert np.abs(pixels(clicked) - pixels(eager_pag)).max() <= 2


def test_compile_off_and_auto_on_the_cpu_run_eager(tmp_path):
    for mode in ("off", "auto"):
        engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out",
                        device="cpu", compile=mode)
        try:
            assert engine.warm_compile() == ""  # nothing to prepare, nothing loaded
            assert engine.loaded_model() is None
            assert job(engine).images and engine.compile_status() is None
        finally:
            engine.unload()
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        Engine(models_dir=tmp_path / "models", device="cpu", compile="fast")


# -- faults, on a bare UNet (nothing is really compiled) -------------------------------------------
def unet_call(unet):
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        return unet(sample, torch.tensor(500), encoder_hidden_states=hidden, return_dict=False)[0]


def test_a_failing_compile_stays_eager(tmp_path, monkeypatch, caplog):
    unet = build_pipeline("tiny-random").unet
    expected = unet_call(unet)

    def broken(*_, **__):
        raise RuntimeError("no C compiler here")

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", broken)
    fast = compiled.FastPath(unet, "cpu", tmp_path / "cache", "unet-test")
    try:
        fast.allowed = True
        with caplog.at_level(logging.WARNING, logger="webui.engine.compiled"):
            assert torch.equal(unet_call(unet), expected)
            assert fast.wait_idle(60)
            assert torch.equal(unet_call(unet), expected)  # still eager, no second try
        assert fast.status()["failed"] == ["64x64"] and fast.compiles == 0
        assert fast.job.compiled_calls == 0 and fast.job.eager_calls == 2
        warnings = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(warnings) == 1 and "no C compiler here" in warnings[0].getMessage()
        assert "compiling for 64x64 failed: eager" in fast.job_notice()
    finally:
        fast.close()
    assert "forward" not in unet.__dict__  # the UNet's own forward is back


def test_a_corrupt_cache_file_is_deleted_and_rebuilt(tmp_path, caplog):
    unet = build_pipeline("tiny-random").unet
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "unet-test.bin").write_bytes(b"\x00not a cache" * 10)
    with caplog.at_level(logging.WARNING, logger="webui.engine.compiled"):
        fast = compiled.FastPath(unet, "cpu", cache, "unet-test")
    try:
        assert not (cache / "unet-test.bin").exists()
        assert any("could not be read" in r.getMessage() for r in caplog.records)
        assert torch.equal(unet_call(unet), unet_call(build_pipeline("tiny-random").unet))
    finally:
        fast.close()


def test_a_vae_the_sdxl_pipelines_upcast_for_each_job_is_not_compiled():
    """SDXL's pipelines turn a half-precision VAE with force_upcast into float32 and back
    during each job, under a background compile's feet: such a VAE stays eager."""
    pipe = build_pipeline("tiny-random")
    pipe.vae.register_to_config(force_upcast=True)
    assert compiled.vae_to_compile(pipe, "sdxl") is pipe.vae  # float32: nothing changes
    for dtype in (torch.float16, torch.bfloat16):
        pipe.vae.to(dtype)
        assert compiled.vae_to_compile(pipe, "sdxl") is None
        assert compiled.vae_to_compile(pipe, "sd1") is pipe.vae  # SD 1.x pipelines never upcast
    pipe.vae.register_to_config(force_upcast=False)
    assert compiled.vae_to_compile(pipe, "sdxl") is pipe.vae



def test_a_compile_runs_its_graph_in_a_thread_that_ends_with_it(monkeypatch):
    """The compile's run of its new graph starts an OpenMP team for the thread that runs it;
    kept alive beside the job thread's team, it slowed every later job on the CPU (2 to 2.5
    times on 2 cores; see webui/threads.py): the run happens in a thread that has ended by
    the time the graph is ready, never in the long-lived compile thread."""
    import threading

    from torch._inductor import compile_fx as inductor

    real, runners = inductor.compile_fx, []

    def recording(*args, **kwargs):
        graph = real(*args, **kwargs)

        def run(*inputs):
            runners.append(threading.current_thread())
            return graph(*inputs)
        return run

    monkeypatch.setattr(inductor, "compile_fx", recording)
    decoder = build_pipeline("tiny-random").vae.decoder.eval()  # a small module to compile
    fast = compiled.FastPath(decoder, "cpu", None, "decoder-test")
    try:
        fast.allowed = True
        latents = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            expected = decoder(latents)  # eager, and the compile queued
        assert fast.wait_idle(COMPILE_TIMEOUT) and fast.compiles == 1
        assert len(runners) == 1 and runners[0] is not fast._thread
        assert not runners[0].is_alive() and runners[0] is not threading.current_thread()
        with torch.no_grad():
            assert torch.allclose(decoder(latents), expected, atol=1e-5)
        assert len(runners) == 2 and runners[1] is threading.current_thread()
    finally:
        fast.close()
