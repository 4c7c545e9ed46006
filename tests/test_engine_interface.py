"""The engine through its interface (webui.engine): the protocol every engine implements, the
JobRequest as plain data that crosses a process boundary, the listings, the queue status, and the
path policy: front doors pass names and the engine confines them to the models folder.

The `api` fixture is the engine under test; an engine served from other processes passes the
same tests with its own fixture.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from webui import engine as public
from webui.engine import EngineAPI, InputError, JobRequest, ModelInfo, QueueStatus
from webui.params import make

from tests.support.tiny_adapters import make_lora


@pytest.fixture
def api(engine) -> EngineAPI:
    return engine


def temporary_latents() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("img2img-latents-*"))


def test_the_in_process_engine_implements_the_protocol(api):
    assert isinstance(api, EngineAPI)
    assert isinstance(api.submit(JobRequest(make(steps=1), Image.new("RGB", (64, 64)),
                                            save=False)), public.JobHandle)


def test_the_public_face_loads_no_torch():
    code = ("import sys, webui.engine; "
            "print('torch' in sys.modules or 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_request_is_plain_data_and_runs_after_a_round_trip(api, make_image):
    request = JobRequest(make(steps=2, strength=0.5, seed=3), make_image(96, 64), save=False,
                         mask=Image.new("L", (96, 64), 255), infotext_extra={"Note": "x"})
    copy = pickle.loads(pickle.dumps(request))
    first, again = api.generate(request), api.generate(copy)
    assert first.images[0].image.size == (96, 64)
    assert first.images[0].image.tobytes() == again.images[0].image.tobytes()
    assert "Note: x" in again.images[0].infotext


def test_latents_travel_as_bytes(api, make_image, tmp_path):
    api.outputs_dir = tmp_path
    made = api.generate(JobRequest(make(steps=2, seed=5, output_type="latent"),
                                   make_image(64, 96)))
    data = made.images[0].path.read_bytes()
    before = temporary_latents()
    result = api.generate(JobRequest(make(steps=2, strength=0.5, seed=5), None, latents=data,
                                     save=False))
    assert result.images[0].image.size == (64, 96)
    assert temporary_latents() == before  # nothing left behind


@pytest.mark.parametrize("settings, field", [
    (dict(model="/etc/passwd"), "model"),
    (dict(model="../../secret.safetensors"), "model"),
    (dict(loras=[{"name": "/tmp/evil.safetensors"}]), "loras[0].name"),
    (dict(loras=[{"name": "../outside"}]), "loras[0].name"),
    (dict(prompt="a fox <lora:../../x:1>"), "prompt"),
    (dict(ip_adapter="/tmp/adapter"), "ip_adapter"),
    (dict(controlnets=[{"model": "/tmp/cn"}]), "controlnets[0].model"),
    (dict(controlnets=[{"model": "owner/some-controlnet"}]), "controlnets[0].model"),
    (dict(model="owner/not-listed"), "model"),  # would download a repo nobody listed
])
def test_names_outside_the_models_folder_are_refused(api, make_image, settings, field):
    request = JobRequest(make(steps=1, **settings), make_image(), save=False)
    with pytest.raises(InputError) as caught:
        api.submit(request)
    assert caught.value.field == field


def test_listed_names_and_hub_ids_pass_and_the_cli_may_name_files(api, make_image, tmp_path):
    lora_dir = api.registry.models_dir / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    pipe = api.pipeline()
    make_lora(pipe, lora_dir / "grain.safetensors")
    assert api.list_loras() == ["grain"]
    api.generate(JobRequest(make(steps=1, loras=[{"name": "grain"}]), make_image(), save=False))
    api.submit(JobRequest(make(steps=1, ip_adapter="owner/ip-adapter-repo"), make_image(),
                          save=False)).cancel()
    outside = tmp_path / "mine.safetensors"
    make_lora(pipe, outside)
    with pytest.raises(InputError, match=r"available LoRAs: grain"):
        api.submit(JobRequest(make(steps=1, loras=[{"name": str(outside)}]), make_image()))
    result = api.generate(JobRequest(make(steps=1, loras=[{"name": str(outside)}]), make_image(),
                                     save=False, allow_paths=True))
    assert result.images


def test_listings_and_queue_status(api):
    models = api.list_models()
    assert all(isinstance(m, ModelInfo) for m in models)
    assert {m.name for m in models} == set(api.models())
    tiny = next(m for m in models if m.name == "tiny-random")
    assert tiny.kind == "tiny"
    assert "Euler a" in api.list_samplers() and "DPM++ 2M Karras" in api.list_samplers()
    assert api.list_controlnets() == [] and api.list_ip_adapters() == []
    assert api.list_detectors() == {}
    status = api.queue_status()
    assert isinstance(status, QueueStatus) and status.capacity == api.queue_size
    assert status.waiting == 0


def test_a_refused_request_leaves_no_file(api):
    before = temporary_latents()
    with pytest.raises(InputError):
        api.submit(JobRequest(make(steps=1, model="/etc/passwd"), None, latents=b"x" * 10))
    assert temporary_latents() == before


def test_load_model_loads_a_listed_model_between_jobs(api):
    api.unload()
    assert api.loaded_model() is None
    assert api.load_model("tiny-random") == api.loaded_model() == "tiny-random"
    with pytest.raises(InputError) as caught:
        api.load_model("/etc/passwd")
    assert caught.value.field == "model"
    assert api.loaded_model() == "tiny-random"  # a refused name leaves the resident model


def test_a_single_files_family_is_read_once_per_file_version(api, tmp_path, monkeypatch):
    from tests.support.testing import save_single_file
    from webui.engine import single_file

    folder = api.models_dir / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    save_single_file(api.pipeline("tiny-random"), folder / "mine.safetensors")
    reads = []
    real = single_file.read_keys
    monkeypatch.setattr(single_file, "read_keys", lambda path: reads.append(path) or real(path))
    first = {m.name: m.family for m in api.list_models()}
    again = {m.name: m.family for m in api.list_models()}
    assert first["mine.safetensors"] == again["mine.safetensors"] == "sd1"
    assert len(reads) == 1
