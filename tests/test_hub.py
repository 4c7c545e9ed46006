"""Downloading a model from the hub, against a loopback stand-in for it (tests/hub_server.py)
serving a tiny-random model in the hub's layout; and the licences shown in the model picker.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and the cache location once, when it is
imported (conftest has imported it by now, offline). Setting the environment variables here
would change nothing, so the `hub` fixture patches the module's constants instead, which the
library reads at each call: ENDPOINT and the resolve URL template built from it, HF_HUB_OFFLINE,
and HF_HUB_CACHE (a per-test folder). diffusers passes no cache folder of its own, so the engine
loads from that same folder.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.hub_server import TINY_REPO, HubServer, build_tiny_repo
from webui.engine import hub
from webui.engine.models import ModelRegistry, ModelSource
from webui.errors import Cancelled, InputError, ModelError
from webui.params import make

PICKLE_REPO = "tester/pickles"
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory):
    """The served repos: the tiny-random SD model (plain and fp16 weights, a model card, and
    files a download must skip), and a repo whose only weights are pickles."""
    root = tmp_path_factory.mktemp("hub")
    build_tiny_repo(root, TINY_REPO)
    pickles = root / PICKLE_REPO
    (pickles / "unet").mkdir(parents=True)
    (pickles / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    (pickles / "unet" / "config.json").write_text("{}")
    (pickles / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    return root


def _point_at(monkeypatch, endpoint: str, cache) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    go_online(monkeypatch)


def go_online(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def go_offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def server(hub_root, tmp_path, monkeypatch):
    """The stand-in hub, running, with huggingface_hub pointed at it and an empty cache."""
    monkeypatch.setattr(hub, "PROGRESS_INTERVAL", 0.0)  # every update reaches the callback
    with HubServer(hub_root, lifetime=60) as running:
        _point_at(monkeypatch, running.endpoint, tmp_path / "hub-cache")
        yield running


def _planned(hub_root, fp16: bool) -> dict[str, int]:
    """What a download of the tiny repo fetches, with the sizes."""
    folder = hub_root / TINY_REPO
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return {f: (folder / f).stat().st_size for f in hub.plan_files(files, fp16=fp16)}


# -- what a download fetches -----------------------------------------------------------------
def test_plan_takes_configs_and_one_set_of_safetensors_weights(hub_root):
    plain, half = _planned(hub_root, fp16=False), _planned(hub_root, fp16=True)
    assert UNET in plain and "unet/diffusion_pytorch_model.fp16.safetensors" not in plain
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in half and UNET not in half
    for files in (plain, half):
        assert {"model_index.json", "unet/config.json", "tokenizer/tokenizer.json",
                "scheduler/scheduler_config.json", "README.md"} <= set(files)
        # Never pickles, the unused safety checker, or the repo's single-file checkpoints.
        assert not any(f.endswith(".bin") or f.startswith("safety_checker/")
                       or "/" not in f and f.endswith(".safetensors") for f in files)


def test_a_single_file_repo_is_pointed_to_the_models_folder():
    with pytest.raises(ModelError, match="not a diffusers-format model.*v1-5.safetensors.*"
                                         "models/Stable-diffusion/"):
        hub.plan_files(["README.md", "v1-5.safetensors", "v1-5.ckpt"])


def test_download_reports_progress_and_the_model_then_generates(server, hub_root, engine,
                                                                make_image, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)  # several updates per file
    seen: list[hub.DownloadProgress] = []
    folder = hub.download(TINY_REPO, on_progress=seen.append, fp16=False)
    total = sum(_planned(hub_root, fp16=False).values())
    assert seen[-1].done == seen[-1].total == total
    assert [p.done for p in seen] == sorted(p.done for p in seen) and len(seen) > 2
    assert all(p.total == total and p.speed >= 0 for p in seen)
    assert (Path(folder) / UNET).read_bytes() == (hub_root / TINY_REPO / UNET).read_bytes()
    assert not server.gets("unet/diffusion_pytorch_model.bin")
    assert hub.cached_models() == [TINY_REPO]
    assert hub.licence(ModelSource("hub", TINY_REPO, TINY_REPO)) == "creativeml-openrail-m"

    # Offline now: the engine must find every file it needs in the cache.
    go_offline(monkeypatch)
    requests = len(server.requests)
    result = engine.generate(make(model=TINY_REPO, steps=2, strength=0.5, seed=1),
                             make_image(96, 64), save=False)
    assert result.images[0].image.size == (96, 64) and result.model == TINY_REPO
    assert len(server.requests) == requests
    engine.unload()


def test_an_fp16_download_loads_offline_with_its_variant(server, hub_root, engine, make_image,
                                                          monkeypatch):
    assert hub.FETCH_FP16, "downloads fetch the half-size set"
    folder = Path(hub.download(TINY_REPO))
    assert (folder / "unet/diffusion_pytorch_model.fp16.safetensors").exists()
    assert not (folder / UNET).exists(), "the plain weights came too"
    go_offline(monkeypatch)
    result = engine.generate(make(model=TINY_REPO, steps=2, strength=0.5, seed=1),
                             make_image(96, 64), save=False)
    assert result.images[0].image.size == (96, 64) and result.model == TINY_REPO
    engine.unload()


def test_a_second_download_fetches_nothing(server):
    hub.download(TINY_REPO, fp16=True)
    before = len(server.gets())
    seen: list[hub.DownloadProgress] = []
    hub.download(TINY_REPO, on_progress=seen.append, fp16=True)
    assert len(server.gets()) == before
    assert seen[-1].done == seen[-1].total == 0


def test_a_dropped_connection_resumes_where_it_broke_off(server, hub_root, monkeypatch):
    from huggingface_hub import constants

    # The client keeps what it has read in whole chunks (10 MB normally): smaller chunks let a
    # 5 MB test file break off after some of them.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    server.drop_once[UNET] = 100_000
    folder = hub.download(TINY_REPO, fp16=False)
    first, second = server.gets(UNET)
    assert first.range == "" and second.range == f"bytes={1 << 16}-"
    assert (Path(folder) / UNET).read_bytes() == (hub_root / TINY_REPO / UNET).read_bytes()


def test_a_cancelled_download_continues_with_the_missing_files(server, hub_root):
    from huggingface_hub import constants, try_to_load_from_cache

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        hub.download(TINY_REPO, on_progress=lambda p: cancel.set() if p.done else None,
                     cancel=cancel, fp16=False)
    planned = _planned(hub_root, fp16=False)
    kept = {f for f in planned if isinstance(try_to_load_from_cache(TINY_REPO, f), str)}
    assert kept and kept != set(planned)
    # huggingface_hub deletes a cancelled file's partial copy (its temporary name is unique to
    # the attempt), so the next run fetches the unfinished files whole, and only them.
    assert not list(Path(constants.HF_HUB_CACHE).rglob("*.incomplete"))
    before = len(server.gets())
    seen: list[hub.DownloadProgress] = []
    hub.download(TINY_REPO, on_progress=seen.append, fp16=False)
    fetched = {r.file for r in server.gets()[before:]}
    assert fetched == set(planned) - kept
    assert seen[-1].total == sum(planned[f] for f in fetched)


# -- clear messages ----------------------------------------------------------------------------
def test_an_unknown_repo_says_so(server):
    with pytest.raises(ModelError, match=r"no model 'tester/nope' on the hub \(check the id\)"):
        hub.download("tester/nope")


def test_a_pickle_only_repo_is_refused(server):
    with pytest.raises(ModelError, match="only pickle weights.*can run code"):
        hub.download(PICKLE_REPO)
    assert not server.gets()


@pytest.mark.parametrize("bad", ["two words/x", "a/b/c", "owner/--name", "justname", ""])
def test_an_invalid_id_is_refused_before_any_request(server, bad):
    with pytest.raises(InputError) as caught:
        hub.download(bad)
    assert caught.value.field == "repo_id" and not server.requests


def test_offline_says_where_to_put_a_file(server):
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # undone by the fixture's monkeypatch
    with pytest.raises(ModelError, match="no network access.*models/Stable-diffusion/"):
        hub.download(TINY_REPO)
    assert not server.requests


def test_an_unreachable_hub_reads_as_offline(hub_root, tmp_path, monkeypatch):
    with HubServer(hub_root) as gone:
        endpoint = gone.endpoint
    _point_at(monkeypatch, endpoint, tmp_path / "cache")
    with pytest.raises(ModelError, match="no network access"):
        hub.download(TINY_REPO)


# -- licences ---------------------------------------------------------------------------------
def test_licences_from_file_metadata_and_model_cards(tmp_path):
    import torch
    from safetensors.torch import save_file

    root = tmp_path / "models" / "Stable-diffusion"
    root.mkdir(parents=True)
    tensor = {"x": torch.zeros(1)}
    save_file(tensor, root / "stated.safetensors", metadata={"modelspec.license": "openrail++"})
    save_file(tensor, root / "silent.safetensors")
    folder = root / "carded"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: studio-nc\n---\n")
    from webui.engine import Engine
    from webui.ui.handlers import Studio

    registry = ModelRegistry(tmp_path / "models")
    studio = Studio(Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    assert studio.model_choices() == [
        ("carded · studio-nc", "carded"), ("silent.safetensors", "silent.safetensors"),
        ("stated.safetensors · openrail++", "stated.safetensors"),
        ("tiny-random", "tiny-random"), ("tiny-random-xl", "tiny-random-xl")]
    # Read once per file version: a changed file is read again.
    save_file(tensor, root / "silent.safetensors", metadata={"modelspec.license": "mit"})
    assert hub.licence(registry.resolve("silent.safetensors")) == "mit"


def test_a_config_only_snapshot_is_not_listed(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # What loading a single file leaves in the cache: the configs of a model, no weights.
    repo = tmp_path / "models--owner--configs"
    snapshot = repo / "snapshots" / ("0" * 40)
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    (snapshot / "unet" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub.cached_models() == []
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert hub.cached_models() == ["owner/configs"]


# -- the page's panel ---------------------------------------------------------------------------
def test_the_panel_downloads_then_lists_and_selects_the_model(server, engine):
    from webui.ui.handlers import Studio
    from webui.ui.model_download import download_model

    studio = Studio(engine)
    assert TINY_REPO not in studio.models()
    views = list(download_model(studio, hub.SUGGESTIONS[0].repo_id, f"  {TINY_REPO} "))
    statuses = [v[0] for v in views]
    assert any(" of " in s and "/s" in s for s in statuses[1:-1])
    assert statuses[-1] == f"**{TINY_REPO}** is downloaded and selected."
    picker, notice = views[-1][1], views[-1][2]
    assert picker["value"] == TINY_REPO and notice["visible"] is False
    assert (f"{TINY_REPO} · creativeml-openrail-m", TINY_REPO) in picker["choices"]
    # The picker's values stay the plain names: a job names the new model like any other.
    assert TINY_REPO in studio.models()
    assert studio._model(TINY_REPO) == TINY_REPO


@pytest.mark.parametrize("typed, message", [
    ("not valid!", "Not downloaded:.*not a valid hub id"),
    ("tester/nope", "failed:.*no model 'tester/nope' on the hub"),
    (PICKLE_REPO, "failed:.*only pickle weights"),
])
def test_the_panel_explains_a_refusal(server, engine, typed, message):
    import re

    from webui.ui.handlers import Studio
    from webui.ui.model_download import download_model

    views = list(download_model(Studio(engine), None, typed))
    assert re.search(message, views[-1][0])
    assert all(is_skip(v[1]) for v in views)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_the_page_offers_the_panel_and_licences_in_the_picker(engine, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from webui.ui import app
    from webui.ui.handlers import Studio

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    demo = app.build(Studio(engine))
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    # Closed, so the workspace stays in view; with only the tiny models the notice points to it.
    assert not blocks["get-model"].open
    assert blocks["tiny-notice"].visible and "Get a model" in blocks["tiny-notice"].value
    choices = blocks["get-model-choice"].choices
    assert [value for _, value in choices] == [s.repo_id for s in hub.SUGGESTIONS]
    assert all(s.licence in label for (label, _), s in zip(choices, hub.SUGGESTIONS))
    assert blocks["model"].choices == [(n, n) for n in Studio(engine).models()]
    download = next(f for f in demo.fns.values() if f.api_name == "download_model")
    # Its own queue, one at a time: a download never waits behind, or holds up, the GPU jobs.
    assert download.concurrency_id == "model-download" and download.concurrency_limit == 1


# -- a shared studio downloads nothing for its visitors (--allow-downloads) ---------------------
def test_a_studio_without_downloads_refuses_the_panel_and_says_how_to_allow_it(server, tmp_path):
    from webui.engine import Engine
    from webui.ui import app
    from webui.ui.handlers import Studio
    from webui.ui.model_download import download_model

    studio = Studio(Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                           allow_downloads=False))
    views = list(download_model(studio, None, TINY_REPO))
    assert "Not downloaded:" in views[-1][0] and "--allow-downloads" in views[-1][0]
    assert all(is_skip(v[1]) for v in views)
    assert not hub.is_cached(TINY_REPO), "nothing was fetched"
    blocks = {getattr(b, "elem_id", None): b for b in app.build(studio).blocks.values()}
    assert blocks["get-model-download"].interactive is False
    assert "--allow-downloads" in blocks["get-model-status"].value


def test_without_downloads_only_a_cached_hub_id_may_be_named(server, tmp_path):
    registry = ModelRegistry(tmp_path / "models", allow_downloads=False)
    with pytest.raises(InputError) as info:
        registry.confine_adapter("ip_adapter", "h94/IP-Adapter", "ip_adapter", hub=True)
    assert info.value.field == "ip_adapter" and "--allow-downloads" in str(info.value)
    hub.download(TINY_REPO, fp16=False)
    assert hub.is_cached(TINY_REPO)
    assert registry.confine_adapter("ip_adapter", TINY_REPO, "ip_adapter", hub=True) == TINY_REPO
    # With downloads allowed (this machine's own studio) any hub id may be named.
    allowed = ModelRegistry(tmp_path / "models")
    assert allowed.confine_adapter("ip_adapter", "h94/IP-Adapter", "ip_adapter",
                                   hub=True) == "h94/IP-Adapter"


@pytest.mark.parametrize("flags, allowed", [
    ([], True), (["--listen"], False), (["--share"], False), (["--host", "192.168.1.5"], False),
    (["--listen", "--allow-downloads"], True), (["--host", "::1"], True),
])
def test_downloads_are_on_only_for_a_studio_this_machine_alone_reaches(flags, allowed):
    from webui.__main__ import build_parser
    from webui.ui.launch import downloads_allowed

    assert downloads_allowed(build_parser().parse_args(flags)) is allowed
