"""A first real model from the page: the Get a model panel downloads a model from a loopback
stand-in for the hub (tests/hub_server.py), shows the progress, selects the model, and the next
Generate runs on it. The studio runs with the hub reachable (HF_ENDPOINT at the stand-in, an
empty cache of its own); every other browser test runs offline."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.hub_server import TINY_REPO, HubServer, build_tiny_repo

from .conftest import log_in, running_studio, shot, studio_env
from .test_studio import JOB_TIMEOUT, generate_and_wait, picture, set_number, text_of, upload


@pytest.fixture(scope="module")
def online_studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    build_tiny_repo(root)
    base = tmp_path_factory.mktemp("online-studio")
    with HubServer(root, lifetime=300) as hub:
        env = {**studio_env(), "HF_ENDPOINT": hub.endpoint,
               "HF_HUB_CACHE": str(base / "hub-cache"), "HF_HUB_DISABLE_XET": "1"}
        env.pop("HF_HUB_OFFLINE")
        with running_studio(base, env=env) as url:
            yield {"url": url, "hub": hub, "base": base}


def test_get_a_model_downloads_selects_and_generates(page, online_studio, tmp_path):
    log_in(page, online_studio["url"])
    page.wait_for_selector("#generate", timeout=60_000)
    expect(page.locator("#tiny-notice")).to_contain_text("Get a model")
    page.locator("#get-model .label-wrap").first.click()
    # The curated list names size and licence.
    expect(page.locator("#get-model-choice input")).to_have_value(
        re.compile(r"≈[\d.]+ GB · creativeml-openrail-m"))
    text_of(page, "get-model-id").fill(TINY_REPO)
    page.click("#get-model-download")
    status = page.locator("#get-model-status")
    expect(status).to_contain_text(re.compile(r"selected", re.I), timeout=JOB_TIMEOUT)
    shot(page, "get-model-downloaded")
    assert online_studio["hub"].gets("unet/diffusion_pytorch_model.fp16.safetensors")
    assert not online_studio["hub"].gets("unet/diffusion_pytorch_model.bin")
    # Selected, with its licence beside its name, and the tiny-model notice gone.
    expect(page.locator("#model input")).to_have_value(re.compile(re.escape(TINY_REPO)))
    expect(page.locator("#model input")).to_have_value(re.compile("creativeml-openrail-m"))
    expect(page.locator("#tiny-notice")).to_be_hidden()

    upload(page, "init-image", picture(tmp_path / "init.png"))
    set_number(page, "steps", 2)
    generate_and_wait(page)
    expect(text_of(page, "result-infotext")).to_have_value(re.compile(f"Model: {TINY_REPO}"))
