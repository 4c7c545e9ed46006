"""The /sdapi/v1 REST API on tiny-random, with requests shaped as its clients send them: a
scripting package's img2img (data-URL pictures, both sampler fields, every field it fills in),
a chat front end's flow (options as a ping, a checkpoint switch, progress polling, txt2img with
unknown keys and an empty Basic header), another chat front end's flow (the whole options dict
posted back, a minimal txt2img), an editor plugin's png-info round trip, inpainting, ControlNet
units, interrupt and skip, and every error path. The API runs in-process (TestClient) on the
engine interface; test_api_access.py covers logins, CORS and serving on the studio's port."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui import presets
from webui.api import Access, ApiService, create_app
from webui.engine import Cancelled, JobRequest
from webui.params import GenerationParams
from webui.tiny import TINY_SD, TINY_SDXL

V1 = "/sdapi/v1"
INFO_KEYS = {"prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed",
             "all_seeds", "subseed", "all_subseeds", "subseed_strength", "width", "height",
             "sampler_name", "cfg_scale", "steps", "batch_size", "sd_model_name", "sd_model_hash",
             "denoising_strength", "extra_generation_params", "index_of_first_image",
             "infotexts", "styles", "job_timestamp", "clip_skip", "version"}
ERROR_KEYS = {"error", "detail", "body", "errors"}


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + b64(image)


def picture(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def pixels(text: str) -> np.ndarray:
    return np.asarray(picture(text).convert("RGB"), dtype=np.int16)


def info_of(response) -> dict:
    return json.loads(response.json()["info"])


@pytest.fixture
def service(engine, tmp_path):
    return ApiService(engine, presets.PresetStore(tmp_path / "presets"))


@pytest.fixture
def client(service):
    return TestClient(create_app(service), raise_server_exceptions=False)


def scripting_img2img(init: Image.Image, **changes) -> dict:
    """An img2img body with every field a scripting client fills in (its defaults)."""
    body = {
        "init_images": [data_url(init)], "resize_mode": 0, "denoising_strength": 0.6,
        "image_cfg_scale": 1.5, "mask": None, "mask_blur": 4, "inpainting_fill": 0,
        "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1, "prompt": "a lighthouse", "styles": [], "seed": 42,
        "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "sampler_name": "Euler a", "sampler_index": "Euler a", "batch_size": 1, "n_iter": 1,
        "steps": 6, "cfg_scale": 7.0, "width": 64, "height": 96, "restore_faces": False,
        "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
        "negative_prompt": "blurry", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
        "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
        "script_args": [], "include_init_images": False, "script_name": None,
        "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    body.update(changes)
    return body


# -- img2img ------------------------------------------------------------------------------------
def test_a_scripting_clients_img2img_matches_the_engine_run_directly(client, engine, init):
    response = client.post(f"{V1}/img2img", json=scripting_img2img(init))
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"images", "parameters", "info"}
    assert not data["images"][0].startswith("data:")
    info = json.loads(data["info"])
    assert INFO_KEYS <= set(info)
    out = picture(data["images"][0])
    assert out.size == (64, 96)
    # The PNG carries the same infotext as info.infotexts.
    assert out.info["parameters"] == info["infotexts"][0]
    assert info["all_seeds"] == [42] and info["seed"] == 42
    assert (info["width"], info["height"], info["steps"]) == (64, 96, 6)
    assert info["sampler_name"] == "Euler a" and info["denoising_strength"] == 0.6
    assert data["parameters"]["init_images"] is None
    # The same job through the engine directly gives the same pixels: the fields were read as
    # the settings they name.
    direct = engine.generate(JobRequest(
        params=GenerationParams(prompt="a lighthouse", negative_prompt="blurry", seed=42,
                                steps=6, strength=0.6, guidance_scale=7, width=64, height=96,
                                scheduler="Euler a", pag_scale=0),
        init_image=init, save=False))
    assert np.array_equal(pixels(data["images"][0]),
                          np.asarray(direct.images[0].image, dtype=np.int16))


def test_a_reused_seed_reproduces_and_another_seed_differs(client, init):
    first = client.post(f"{V1}/img2img", json=scripting_img2img(init, seed=7, width=64, height=64))
    again = client.post(f"{V1}/img2img", json=scripting_img2img(init, seed=7, width=64, height=64))
    other = client.post(f"{V1}/img2img", json=scripting_img2img(init, seed=8, width=64, height=64))
    assert np.array_equal(pixels(first.json()["images"][0]), pixels(again.json()["images"][0]))
    assert not np.array_equal(pixels(first.json()["images"][0]), pixels(other.json()["images"][0]))


def test_raw_base64_and_jpeg_init_images_are_read(client, init):
    for text in (b64(init), b64(init, "JPEG")):
        response = client.post(f"{V1}/img2img", json={"init_images": [text], "steps": 4,
                                                       "width": 64, "height": 64})
        assert response.status_code == 200, response.text
        assert picture(response.json()["images"][0]).size == (64, 64)


def test_sampler_name_scheduler_and_sampler_index(client, init):
    body = scripting_img2img(init, sampler_name="DPM++ 2M", scheduler="karras",
                             sampler_index="Euler")
    text = info_of(client.post(f"{V1}/img2img", json=body))["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text
    combined = scripting_img2img(init, sampler_name="DPM++ 2M Karras")
    assert "Schedule type: Karras" in info_of(client.post(f"{V1}/img2img", json=combined)
                                              )["infotexts"][0]
    exponential = scripting_img2img(init, sampler_name="Euler", scheduler="exponential")
    assert "Sampler: Euler, Schedule type: Exponential" in info_of(
        client.post(f"{V1}/img2img", json=exponential))["infotexts"][0]
    only_index = scripting_img2img(init, sampler_name=None, sampler_index="DDIM")
    assert "Sampler: DDIM" in info_of(client.post(f"{V1}/img2img", json=only_index)
                                      )["infotexts"][0]
    # Neither sent: the default sampler_index.
    bare = {"init_images": [b64(init)], "steps": 3, "width": 64, "height": 64}
    assert "Sampler: Euler," in info_of(client.post(f"{V1}/img2img", json=bare))["infotexts"][0]


@pytest.mark.parametrize("mode, expected", [(0, "just resize"), (1, "crop and resize"),
                                            (2, "resize and fill"), (3, "just resize")])
def test_resize_modes_by_number(client, make_image, mode, expected):
    body = {"init_images": [b64(make_image(96, 64))], "steps": 3, "width": 64, "height": 64,
            "resize_mode": mode, "seed": 1}
    text = info_of(client.post(f"{V1}/img2img", json=body))["infotexts"][0]
    if expected == "just resize":
        assert "Resize mode" not in text
    else:
        assert f"Resize mode: {expected.capitalize()}" in text


def test_include_init_images_send_images_and_save_images(client, engine, init):
    body = scripting_img2img(init, include_init_images=True, send_images=False,
                             save_images=True, width=64, height=64)
    data = client.post(f"{V1}/img2img", json=body).json()
    assert data["images"] == []
    assert data["parameters"]["init_images"] == body["init_images"]
    saved = list(engine.outputs_dir.rglob("*.png"))
    assert len(saved) == 1
    assert Image.open(saved[0]).info["parameters"] == json.loads(data["info"])["infotexts"][0]
    # save_images defaults to false, as the clients expect.
    client.post(f"{V1}/img2img", json=scripting_img2img(init, width=64, height=64))
    assert len(list(engine.outputs_dir.rglob("*.png"))) == 1


def test_a_batch_gives_one_picture_and_infotext_per_image(client, init):
    body = scripting_img2img(init, batch_size=2, n_iter=2, width=64, height=64, seed=100)
    info = info_of(client.post(f"{V1}/img2img", json=body))
    assert info["all_seeds"] == [100, 101, 102, 103]
    assert len(info["infotexts"]) == 4 and "Seed: 103" in info["infotexts"][3]


def test_styles_wrap_the_prompt_and_fill_unset_settings(client, init):
    body = {"init_images": [b64(init)], "prompt": "a cat", "styles": ["Sharpen a blurry result"],
            "width": 64, "height": 64, "steps": 5}
    text = info_of(client.post(f"{V1}/img2img", json=body))["infotexts"][0]
    assert text.startswith("a cat, highly detailed, sharp focus")
    assert "bad anatomy" in text  # the preset's standard negative prompt
    assert "Steps: 5," in text  # sent: the request wins
    assert "Denoising strength: 0.45" in text  # not sent: the style's
    styles = client.get(f"{V1}/prompt-styles").json()
    sharpen = next(s for s in styles if s["name"] == "Sharpen a blurry result")
    assert sharpen["prompt"].startswith("{prompt}")


def test_infotext_fills_the_fields_the_request_does_not_send(client, init):
    """An editor plugin's round trip: a picture's settings read back through png-info, then
    sent as `infotext`, reproduce the picture."""
    first = client.post(f"{V1}/img2img", json=scripting_img2img(
        init, seed=1234, steps=7, cfg_scale=5.5, sampler_name="DPM++ 2M", scheduler="karras",
        width=64, height=64))
    image = first.json()["images"][0]
    read = client.post(f"{V1}/png-info", json={"image": "data:image/png;base64," + image})
    assert read.status_code == 200
    data = read.json()
    assert set(data) == {"info", "items", "parameters"}
    assert data["info"] == info_of(first)["infotexts"][0]
    assert data["parameters"]["Steps"] == "7" and data["parameters"]["Seed"] == "1234"
    assert data["parameters"]["Prompt"] == "a lighthouse"
    assert (data["parameters"]["Size-1"], data["parameters"]["Size-2"]) == ("64", "64")
    again = client.post(f"{V1}/img2img", json={"init_images": [b64(init)],
                                               "infotext": data["info"], "width": 64,
                                               "height": 64})
    assert np.array_equal(pixels(again.json()["images"][0]), pixels(image))
    # A field sent wins over the text.
    other = client.post(f"{V1}/img2img", json={"init_images": [b64(init)],
                                               "infotext": data["info"], "seed": 99,
                                               "width": 64, "height": 64})
    assert "Seed: 99," in info_of(other)["infotexts"][0]
    assert "Steps: 7," in info_of(other)["infotexts"][0]


def test_png_info_of_a_picture_without_settings(client, init):
    data = client.post(f"{V1}/png-info", json={"image": b64(init)}).json()
    assert data == {"info": "", "items": {}, "parameters": {}}


def test_png_info_reads_the_exif_comment_of_a_jpeg_as_the_studio_does(client, init):
    text = "a fox\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 2, Size: 64x64"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")  # UserComment
    buffer = io.BytesIO()
    init.save(buffer, "JPEG", exif=exif.tobytes())
    data = client.post(f"{V1}/png-info", json={
        "image": base64.b64encode(buffer.getvalue()).decode()}).json()
    assert data["info"] == text
    assert data["parameters"]["Prompt"] == "a fox" and data["parameters"]["Seed"] == "2"


# -- inpainting ---------------------------------------------------------------------------------
def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpainting_fills_keep_every_pixel_outside_the_mask(client, make_image, fill):
    init = make_image(64, 64, seed=3)
    body = {"init_images": [b64(init)], "mask": b64(_mask()), "inpainting_fill": fill,
            "mask_blur": 0, "inpaint_full_res": False, "steps": 6, "denoising_strength": 0.9,
            "width": 64, "height": 64, "seed": 5}
    response = client.post(f"{V1}/img2img", json=body)
    assert response.status_code == 200, response.text
    out = pixels(response.json()["images"][0])
    original = np.asarray(init, dtype=np.int16)
    outside = np.asarray(_mask()) == 0
    assert np.array_equal(out[outside], original[outside])
    assert not np.array_equal(out[~outside], original[~outside])
    expected = ["fill", "original", "latent noise", "latent nothing"][fill]
    assert f"Masked content: {expected}" in info_of(response)["infotexts"][0]


def test_inpainting_mask_invert_repaints_the_other_part(client, make_image):
    init = make_image(64, 64, seed=4)
    body = {"init_images": [b64(init)], "mask": b64(_mask()), "inpainting_mask_invert": 1,
            "mask_blur": 0, "inpaint_full_res": False, "steps": 6, "denoising_strength": 0.9,
            "width": 64, "height": 64}
    out = pixels(client.post(f"{V1}/img2img", json=body).json()["images"][0])
    original = np.asarray(init, dtype=np.int16)
    inside = np.asarray(_mask()) == 255
    assert np.array_equal(out[inside], original[inside])
    assert not np.array_equal(out[~inside], original[~inside])


def test_mask_blur_by_axis_and_the_mask_left_out_of_parameters(client, make_image):
    init = make_image(64, 64, seed=7)
    body = {"init_images": [b64(init)], "mask": b64(_mask()), "mask_blur": None,
            "mask_blur_x": 2, "mask_blur_y": 8, "steps": 4, "width": 64, "height": 64}
    response = client.post(f"{V1}/img2img", json=body)
    assert response.status_code == 200, response.text
    assert "Mask blur: 8" in info_of(response)["infotexts"][0]  # the larger of the two
    sent = response.json()["parameters"]
    assert sent["mask"] is None and sent["init_images"] is None
    assert (sent["mask_blur_x"], sent["mask_blur_y"]) == (2, 8)
    back = client.post(f"{V1}/img2img", json={**body, "include_init_images": True}).json()
    assert back["parameters"]["mask"] == body["mask"]
    assert back["parameters"]["init_images"] == body["init_images"]


def test_seed_minus_one_is_a_random_seed_reported_as_used(client, init):
    seeds = set()
    for _ in range(2):
        response = client.post(f"{V1}/img2img", json={"init_images": [b64(init)], "seed": -1,
                                                       "steps": 2, "width": 64, "height": 64})
        info = info_of(response)
        assert 0 <= info["seed"] < 2**32 and info["all_seeds"] == [info["seed"]]
        assert f"Seed: {info['seed']}," in info["infotexts"][0]
        seeds.add(info["seed"])
    assert len(seeds) == 2  # two draws of 2**32 meet by chance one time in four billion


def test_inpaint_only_masked_with_padding(client, make_image):
    init = make_image(64, 64, seed=6)
    body = {"init_images": [b64(init)], "mask": b64(_mask()), "inpaint_full_res": True,
            "inpaint_full_res_padding": 8, "mask_blur": 0, "steps": 4, "width": 64,
            "height": 64}
    response = client.post(f"{V1}/img2img", json=body)
    text = info_of(response)["infotexts"][0]
    assert "Inpaint area: Only masked" in text and "Masked area padding: 8" in text
    outside = np.asarray(_mask()) == 0
    assert np.array_equal(pixels(response.json()["images"][0])[outside],
                          np.asarray(init, dtype=np.int16)[outside])


# -- txt2img ------------------------------------------------------------------------------------
def test_txt2img_makes_a_picture_of_the_asked_size(client):
    response = client.post(f"{V1}/txt2img", json={"prompt": "a red barn", "width": 96,
                                                   "height": 64, "steps": 5, "seed": 3})
    assert response.status_code == 200, response.text
    info = info_of(response)
    assert INFO_KEYS <= set(info)
    out = picture(response.json()["images"][0])
    assert out.size == (96, 64)
    assert out.info["parameters"] == info["infotexts"][0]
    assert info["denoising_strength"] == 0
    again = client.post(f"{V1}/txt2img", json={"prompt": "a red barn", "width": 96,
                                                "height": 64, "steps": 5, "seed": 3})
    assert np.array_equal(pixels(again.json()["images"][0]), pixels(response.json()["images"][0]))


def test_txt2img_hires_fix_is_a_second_img2img_pass(client):
    body = {"prompt": "a red barn", "width": 64, "height": 64, "steps": 4, "seed": 3,
            "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
            "denoising_strength": 0.5, "hr_second_pass_steps": 3}
    response = client.post(f"{V1}/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert picture(response.json()["images"][0]).size == (96, 96)
    text = info_of(response)["infotexts"][0]
    assert "Hires resize: 96x96" in text and "First pass size: 64x64" in text
    assert info_of(response)["denoising_strength"] == 0.5
    # info describes the request: its prompt and steps are the first pass's, the hires ones
    # are in extra_generation_params as the picture's infotext has them.
    info = info_of(response)
    assert (info["steps"], info["prompt"], info["width"]) == (4, "a red barn", 96)
    assert info["extra_generation_params"]["Hires upscale"] == 1.5
    assert info["extra_generation_params"]["Hires steps"] == 3 and "Hires steps: 3" in text
    # A size instead of a scale: the scale it made, whatever hr_scale says.
    sized = info_of(client.post(f"{V1}/txt2img", json={
        **body, "hr_resize_x": 80, "hr_scale": 2, "hr_prompt": "a blue barn"}))
    assert sized["extra_generation_params"]["Hires upscale"] == 1.25
    assert "Hires upscale: 1.25" in sized["infotexts"][0]
    assert sized["prompt"] == "a red barn" and sized["infotexts"][0].startswith("a blue barn")
    bad = client.post(f"{V1}/txt2img", json={**body, "hr_scale": 9})
    assert bad.status_code == 422 and bad.json()["field"] == "hr_scale"
    unknown = client.post(f"{V1}/txt2img", json={**body, "hr_upscaler": "ESRGAN_4x"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "hr_upscaler"


# -- chat front ends ----------------------------------------------------------------------------
TINY_MODELS = (TINY_SD, TINY_SDXL)


def _other_model(client, current: str) -> dict:
    models = client.get(f"{V1}/sd-models").json()
    # A built-in one: other tests may leave files in the shared models folder.
    return next(m for m in models if m["title"] != current and m["filename"] in TINY_MODELS)


def test_a_chat_front_ends_flow_with_an_empty_basic_header(client, service):
    """Options as a ping, a checkpoint switch, txt2img with unknown keys while /progress is
    polled, all with the empty Basic header such a client sends when no login is set."""
    headers = {"Authorization": "Basic "}
    options = client.get(f"{V1}/options", headers=headers)
    assert options.status_code == 200
    current = options.json()["sd_model_checkpoint"]
    assert current in [m["title"] for m in client.get(f"{V1}/sd-models", headers=headers).json()]
    other = _other_model(client, current)
    switched = client.post(f"{V1}/options", json={"sd_model_checkpoint": other["title"]},
                           headers=headers)
    assert switched.status_code == 200 and isinstance(switched.json(), dict), switched.text
    assert client.get(f"{V1}/options", headers=headers).json()["sd_model_checkpoint"] == \
        other["title"]
    assert service.engine.loaded_model() is not None
    idle = client.get(f"{V1}/progress", headers=headers).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0

    seen: list[dict] = []
    body = {"prompt": "a castle", "negative_prompt": "", "width": 64, "height": 64,
            "steps": 40, "n_iter": 2, "seed": 9, "sampler_name": "Euler a",
            "enable_hr": False, "hr_scale": 2, "denoising_strength": 0.7,
            "restore_faces": False, "override_settings_restore_afterwards": True,
            "some_future_key": {"nested": [1, 2]}, "hr_additional_modules": []}
    answer: dict = {}
    worker = threading.Thread(target=lambda: answer.update(
        response=client.post(f"{V1}/txt2img", json=body, headers=headers)))
    worker.start()
    deadline = time.monotonic() + 60
    asked_without: list[dict] = []
    while worker.is_alive() and time.monotonic() < deadline:
        seen.append(client.get(f"{V1}/progress", headers=headers).json())
        # Clients that draw their own progress bar ask without the picture, mid-job too.
        asked_without.append(client.get(f"{V1}/progress", headers=headers,
                                        params={"skip_current_image": True}).json())
        time.sleep(0.05)
    worker.join()
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert info_of(response)["sd_model_name"] == other["model_name"]
    running = [p for p in seen if p["state"]["sampling_steps"]]
    assert running, "progress never showed the running job"
    assert all(0 <= p["progress"] <= 1 for p in seen)
    assert max(p["progress"] for p in running) > min(p["progress"] for p in running)
    assert any(p["current_image"] for p in running)
    preview = next(p["current_image"] for p in running if p["current_image"])
    assert picture(preview).size[0] > 0
    sampling_without = [p for p in asked_without if p["state"]["sampling_steps"]]
    assert sampling_without and all(p["current_image"] is None for p in asked_without)
    for p in running:
        state = p["state"]
        assert p["eta_relative"] >= 0 and p["textinfo"].startswith("Sampling step")
        assert state["job"] == "txt2img" and state["job_no"] in (0, 1)
        assert state["job_count"] >= 1 and not state["skipped"] and not state["interrupted"]
        assert re.fullmatch(r"\d{14}", state["job_timestamp"])
        assert 1 <= state["sampling_step"] <= state["sampling_steps"]


def test_the_other_chat_front_ends_flow_posts_the_whole_options_back(client):
    options = client.get(f"{V1}/options").json()
    posted = client.post(f"{V1}/options", json=options)
    assert posted.status_code == 200 and isinstance(posted.json(), dict)
    assert client.get(f"{V1}/options").json() == options
    response = client.post(f"{V1}/txt2img", json={"prompt": "a boat", "batch_size": 1,
                                                   "width": 64, "height": 64, "steps": 4})
    assert response.status_code == 200
    assert len(response.json()["images"]) == 1


def test_override_settings_checkpoint_for_one_request_or_to_keep(client):
    current = client.get(f"{V1}/options").json()["sd_model_checkpoint"]
    other = _other_model(client, current)
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 3,
            "override_settings": {"sd_model_checkpoint": other["title"],
                                  "some_setting_ignored": 3}}
    response = client.post(f"{V1}/txt2img", json=body)
    assert info_of(response)["sd_model_name"] == other["model_name"]
    assert client.get(f"{V1}/options").json()["sd_model_checkpoint"] == current
    kept = client.post(f"{V1}/txt2img", json={**body,
                                              "override_settings_restore_afterwards": False})
    assert kept.status_code == 200
    assert client.get(f"{V1}/options").json()["sd_model_checkpoint"] == other["title"]


# -- interrupt and skip -------------------------------------------------------------------------
def _in_background(client, path, body, headers=None):
    answer: dict = {}
    worker = threading.Thread(target=lambda: answer.update(
        response=client.post(path, json=body, headers=headers or {})))
    worker.start()
    return worker, answer


def _wait_sampling(client, headers=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"{V1}/progress", headers=headers or {}).json()["state"]
        if state["sampling_step"] >= 1:
            return state
        time.sleep(0.02)
    raise AssertionError("the job never started sampling")


def test_interrupt_stops_the_callers_job(client, init):
    body = {"init_images": [b64(init)], "steps": 150, "denoising_strength": 1.0,
            "n_iter": 20, "width": 64, "height": 64}
    worker, answer = _in_background(client, f"{V1}/img2img", body)
    _wait_sampling(client)
    started = time.monotonic()
    assert client.post(f"{V1}/interrupt").json() == {}
    worker.join(60)
    assert time.monotonic() - started < 20
    response = answer["response"]
    assert response.status_code == 200
    info = info_of(response)
    assert info["interrupted"] is True
    assert len(info["all_seeds"]) < 20


def test_skip_ends_the_running_batch_and_goes_on(client, init):
    body = {"init_images": [b64(init)], "steps": 150, "denoising_strength": 1.0, "n_iter": 2,
            "width": 64, "height": 64, "seed": 10}
    worker, answer = _in_background(client, f"{V1}/img2img", body)
    _wait_sampling(client)
    assert isinstance(client.post(f"{V1}/skip").json(), dict)
    worker.join(120)
    info = info_of(answer["response"])
    assert info["all_seeds"] == [10, 11]
    assert info["interrupted"] is False


def test_an_api_user_cannot_stop_another_users_job_but_an_admin_can(engine, tmp_path, init):
    access = Access(users=[("ann", "a"), ("bob", "b"), ("root", "r")],
                    admins=frozenset({"root"}))
    service = ApiService(engine, presets.PresetStore(tmp_path / "p"), per_user_styles=True)
    client = TestClient(create_app(service, access), raise_server_exceptions=False)
    ann, bob, root = ({"Authorization": "Basic " + base64.b64encode(p.encode()).decode()}
                      for p in ("ann:a", "bob:b", "root:r"))
    body = {"init_images": [b64(init)], "steps": 40, "denoising_strength": 1.0, "n_iter": 2,
            "width": 64, "height": 64}
    worker, answer = _in_background(client, f"{V1}/img2img", body, ann)
    _wait_sampling(client, ann)
    assert client.get(f"{V1}/progress", headers=bob).json()["current_image"] is None
    client.post(f"{V1}/interrupt", headers=bob)
    worker.join(120)
    assert info_of(answer["response"])["interrupted"] is False
    assert len(info_of(answer["response"])["all_seeds"]) == 2

    # A studio job (another door, another user) is not the API's to stop, except by an admin.
    job = engine.submit(JobRequest(params=GenerationParams(steps=150, strength=1.0,
                                                           batch_count=20, pag_scale=0),
                                   init_image=init, save=False, owner="carol"))
    _wait_sampling(client, ann)
    client.post(f"{V1}/interrupt", headers=ann)
    time.sleep(0.3)
    assert not job.done
    client.post(f"{V1}/interrupt", headers=root)
    result = job.result(timeout=30)
    assert result.interrupted


# -- ControlNet ---------------------------------------------------------------------------------
@pytest.fixture
def controlnet_client(tmp_path):
    from tests.support.tiny_adapters import make_controlnet
    from webui.engine import Engine
    from webui.tiny import build_pipeline

    make_controlnet(build_pipeline("tiny-random"), tmp_path / "models" / "ControlNet" / "edges",
                    seed=4)
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", device="cpu",
                    model="tiny-random")
    service = ApiService(engine, presets.PresetStore(tmp_path / "presets"))
    yield TestClient(create_app(service), raise_server_exceptions=False)
    engine.cancel_all()
    engine.unload()


def test_controlnet_units_in_the_extensions_shape(controlnet_client, init):
    client = controlnet_client
    assert client.get("/controlnet/model_list").json()["model_list"] == ["edges"]
    assert "canny" in client.get("/controlnet/module_list").json()["module_list"]
    unit = {"enabled": True, "module": "canny", "model": "edges [0123abcd]", "weight": 0.8,
            "guidance_start": 0.0, "guidance_end": 1.0, "threshold_a": 50, "threshold_b": 150,
            "processor_res": 512, "pixel_perfect": False, "control_mode": 0}
    body = {"init_images": [b64(init)], "steps": 4, "width": 64, "height": 64, "seed": 2,
            "alwayson_scripts": {"controlnet": {"args": [unit, {"enabled": False}]}}}
    with_cn = client.post(f"{V1}/img2img", json=body)
    assert with_cn.status_code == 200, with_cn.text
    text = info_of(with_cn)["infotexts"][0]
    assert "ControlNet 0" in text and "model: edges" in text and "low: 50" in text
    plain = client.post(f"{V1}/img2img", json={**body, "alwayson_scripts": {}})
    assert not np.array_equal(pixels(with_cn.json()["images"][0]),
                              pixels(plain.json()["images"][0]))
    # txt2img: the unit brings its own control picture (there is no init image to trace).
    uploaded = {**unit, "image": b64(init)}
    text_body = {"prompt": "x", "steps": 3, "width": 96, "height": 64, "seed": 2}
    txt = client.post(f"{V1}/txt2img", json={**text_body, "alwayson_scripts": {
        "ControlNet": {"args": [uploaded]}}})
    assert txt.status_code == 200, txt.text
    assert "ControlNet 0" in info_of(txt)["infotexts"][0]
    plain_txt = client.post(f"{V1}/txt2img", json=text_body)
    assert pixels(txt.json()["images"][0]).shape == (64, 96, 3)
    assert not np.array_equal(pixels(txt.json()["images"][0]),
                              pixels(plain_txt.json()["images"][0]))
    missing = client.post(f"{V1}/txt2img", json={**text_body, "alwayson_scripts": {
        "controlnet": {"args": [unit]}}})
    assert missing.status_code == 422, missing.text
    assert missing.json()["field"] == "alwayson_scripts.controlnet.args[0].image"
    for bad, field in (({**unit, "model": "../../etc"}, "alwayson_scripts.controlnet.args[0].model"),
                       ({**unit, "module": "lineart_magic"},
                        "alwayson_scripts.controlnet.args[0].module"),
                       ({**unit, "weight": 9}, "alwayson_scripts.controlnet.args[0].scale")):
        response = client.post(f"{V1}/img2img", json={
            **body, "alwayson_scripts": {"controlnet": {"args": [bad]}}})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field


# -- listings -----------------------------------------------------------------------------------
def test_listings_have_the_clients_shapes(client, engine):
    samplers = client.get(f"{V1}/samplers").json()
    assert {"Euler a", "DPM++ 2M Karras"} <= {s["name"] for s in samplers}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert [s["name"] for s in client.get(f"{V1}/schedulers").json()] == [
        "automatic", "karras", "exponential"]
    models = client.get(f"{V1}/sd-models").json()
    assert [m["filename"] for m in models] == engine.models()
    assert all({"title", "model_name", "hash", "sha256", "filename", "config"} <= set(m)
               for m in models)
    assert client.get(f"{V1}/sd-vae").json() == []
    assert client.get(f"{V1}/latent-upscale-modes").json() == []
    assert "Lanczos" in [u["name"] for u in client.get(f"{V1}/upscalers").json()]
    assert client.get(f"{V1}/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get(f"{V1}/scripts").json() == {"txt2img": [], "img2img": []}
    memory = client.get(f"{V1}/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0
    assert "error" in memory["cuda"]
    assert client.post(f"{V1}/refresh-checkpoints").status_code == 200
    assert client.get("/internal/ping").json() == {}
    options = client.get(f"{V1}/options/").json()
    assert {"sd_model_checkpoint", "sd_checkpoint_hash"} <= set(options)
    schema = client.get("/openapi.json").json()
    assert f"{V1}/img2img" in schema["paths"] and f"{V1}/txt2img" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_loras_are_listed_with_paths_inside_the_models_folder(tmp_path):
    from tests.support.tiny_adapters import make_lora
    from webui.engine import Engine
    from webui.tiny import build_pipeline

    make_lora(build_pipeline("tiny-random"), tmp_path / "models" / "Lora" / "film.safetensors")
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", device="cpu")
    client = TestClient(create_app(ApiService(engine, presets.PresetStore(tmp_path / "p"))))
    assert client.get(f"{V1}/loras").json() == [
        {"name": "film", "alias": "film", "path": "Lora/film.safetensors", "metadata": {}}]


def test_a_checkpoint_added_later_is_listed_after_a_refresh_with_its_hashes(tmp_path):
    import hashlib

    from tests.support.testing import save_single_file
    from webui.engine import Engine
    from webui.engine.single_file import write_config_folder
    from webui.tiny import build_pipeline

    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", device="cpu",
                    model="tiny-random")
    client = TestClient(create_app(ApiService(engine, presets.PresetStore(tmp_path / "p"))))
    assert "mine.safetensors" not in [m["filename"] for m in client.get(f"{V1}/sd-models").json()]
    pipe = build_pipeline("tiny-random")
    # The single file's component configs, as the studio finds them offline.
    write_config_folder(pipe, tmp_path / "models" / "configs" / "sd1")
    path = save_single_file(pipe, tmp_path / "models" / "Stable-diffusion" / "mine.safetensors")
    assert client.post(f"{V1}/refresh-checkpoints").json() == {}
    listed = {m["filename"]: m for m in client.get(f"{V1}/sd-models").json()}
    # Not hashed yet (a listing never reads a whole file): no hash, the bare name as title.
    assert listed["mine.safetensors"]["hash"] is None
    assert listed["mine.safetensors"]["title"] == "mine.safetensors"
    switched = client.post(f"{V1}/options", json={"sd_model_checkpoint": "mine.safetensors"})
    assert switched.status_code == 200, switched.text
    # Its first job hashes it (once per file version), as its infotext's Model hash needs.
    job = client.post(f"{V1}/txt2img", json={"prompt": "a barn", "steps": 2, "width": 64,
                                             "height": 64})
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info_of(job)["sd_model_hash"] == sha256[:10]
    mine = {m["filename"]: m for m in client.get(f"{V1}/sd-models").json()}["mine.safetensors"]
    assert (mine["hash"], mine["sha256"]) == (sha256[:10], sha256)
    assert mine["title"] == f"mine.safetensors [{sha256[:10]}]"
    options = client.get(f"{V1}/options").json()
    assert options["sd_model_checkpoint"] == mine["title"]
    assert options["sd_checkpoint_hash"] == sha256
    engine.unload()


# -- errors -------------------------------------------------------------------------------------
def _bad_bodies(init: Image.Image):
    good = {"init_images": [b64(init)], "steps": 3, "width": 64, "height": 64}
    text = base64.b64encode(b"just some text").decode()
    return [
        ({**good, "init_images": ["https://example.com/cat.png"]}, "init_images[0]"),
        ({**good, "init_images": ["not base64 at all!!"]}, "init_images[0]"),
        ({**good, "init_images": [text]}, "init_images[0]"),
        ({**good, "init_images": [""]}, "init_images[0]"),
        ({**good, "init_images": []}, "init_images"),
        ({**good, "init_images": [b64(init), b64(init)]}, "init_images"),
        ({**good, "init_images": "abc"}, "init_images"),
        ({**good, "mask": "data:text/plain;base64,aGVsbG8="}, "mask"),
        ({**good, "prompt": 5}, "prompt"),
        ({**good, "prompt": ["a", "b"]}, "prompt"),
        ({**good, "steps": 1000}, "steps"),
        ({**good, "steps": "many"}, "steps"),
        ({**good, "steps": 2.5}, "steps"),
        ({**good, "width": 100000}, "width"),
        ({**good, "cfg_scale": -3}, "cfg_scale"),
        ({**good, "denoising_strength": 1.5}, "denoising_strength"),
        ({**good, "seed": 2**40}, "seed"),
        ({**good, "batch_size": 1000}, "batch_size"),
        ({**good, "n_iter": 1000}, "n_iter"),
        ({**good, "draft": 9}, "draft"),
        ({**good, "draft": "fast"}, "draft"),
        ({**good, "sampler_name": "Warp drive"}, "sampler_name"),
        ({**good, "scheduler": "polyexponential"}, "scheduler"),
        ({**good, "sampler_name": "DDIM", "scheduler": "exponential"}, "scheduler"),
        ({**good, "styles": ["No such style"]}, "styles[0]"),
        ({**good, "subseed_strength": 0.5}, "subseed_strength"),
        ({**good, "restore_faces": True}, "restore_faces"),
        ({**good, "tiling": True}, "tiling"),
        ({**good, "mask": b64(_mask()), "inpainting_mask_invert": 5}, "inpainting_mask_invert"),
        ({**good, "mask": b64(_mask()), "mask_blur": None, "mask_blur_x": -2},
         "mask_blur_x"),
        ({**good, "script_name": "x/y plot"}, "script_name"),
        ({**good, "alwayson_scripts": {"adetailer": {"args": []}}}, "alwayson_scripts.adetailer"),
        ({**good, "alwayson_scripts": {"controlnet": {"args": [{"model": "nope"}]}}},
         "alwayson_scripts.controlnet.args[0].model"),
        ({**good, "override_settings": {"sd_model_checkpoint": "nope.safetensors"}},
         "override_settings.sd_model_checkpoint"),
        ({**good, "override_settings": {"sd_model_checkpoint": "/etc/passwd"}},
         "override_settings.sd_model_checkpoint"),
        ({**good, "override_settings": {"CLIP_stop_at_last_layers": 2}},
         "override_settings.CLIP_stop_at_last_layers"),
        ({**good, "resize_mode": 7}, "resize_mode"),
        ({**good, "mask": b64(_mask()), "inpainting_fill": 9}, "inpainting_fill"),
        ({**good, "mask": b64(_mask()), "inpaint_full_res_padding": 9999},
         "inpaint_full_res_padding"),
        ({**good, "infotext": "Steps: 5, Sampler: Euler, Model: /etc/passwd, Seed: 1"},
         "infotext"),
    ]


def test_draft_mode_through_the_api(client, init):
    response = client.post(f"{V1}/img2img", json={
        "init_images": [b64(init)], "steps": 6, "width": 64, "height": 64, "seed": 3,
        "draft": 2})
    assert response.status_code == 200, response.text
    info = info_of(response)
    assert info["extra_generation_params"]["Draft"] == 2
    assert "Draft: 2" in info["infotexts"][0]
    assert "Draft mode (lossy)" in info["extra_generation_params"]["Notice"]
    # Sent back as `infotext`, the text brings the draft setting with it.
    again = client.post(f"{V1}/img2img", json={"init_images": [b64(init)], "width": 64,
                                               "height": 64, "infotext": info["infotexts"][0]})
    assert "Draft: 2" in info_of(again)["infotexts"][0]
    assert np.array_equal(pixels(again.json()["images"][0]),
                          pixels(response.json()["images"][0]))


def test_every_bad_field_is_a_422_naming_it_and_the_server_keeps_serving(client, init):
    for body, field in _bad_bodies(init):
        response = client.post(f"{V1}/img2img", json=body)
        assert response.status_code == 422, (field, response.text)
        data = response.json()
        assert ERROR_KEYS <= set(data)
        assert data["field"] == field, (field, data)
        assert field.split("[")[0].split(".")[0] in data["detail"], data
        assert "Traceback" not in response.text and "TypeError" not in response.text
    assert client.post(f"{V1}/img2img", json={"init_images": [b64(init)], "steps": 3,
                                              "width": 64, "height": 64}).status_code == 200


def test_bodies_that_are_not_objects_and_non_finite_numbers(client, init):
    for raw in (b"{not json", b"[1, 2]", b'"text"', b"null",
                b'{"init_images": ["x"], "cfg_scale": NaN}',
                b'{"init_images": ["x"], "denoising_strength": Infinity}'):
        response = client.post(f"{V1}/img2img", content=raw,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (raw, response.text)
        assert ERROR_KEYS <= set(response.json())
    # Nested deeper than the JSON decoder recurses: refused in the clients' shape too.
    deep = b'{"prompt": "x", "styles": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for path in ("img2img", "txt2img", "options"):
        response = client.post(f"{V1}/{path}", content=deep,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert ERROR_KEYS <= set(response.json()) and "JSON" in response.json()["detail"]
    missing = client.get(f"{V1}/no-such-route")
    assert missing.status_code == 404 and ERROR_KEYS <= set(missing.json())
    nan = client.post(f"{V1}/txt2img", content=b'{"enable_hr": true, "hr_scale": NaN}',
                      headers={"Content-Type": "application/json"})
    assert nan.status_code == 422 and nan.json()["field"] == "hr_scale"


def test_options_refuse_an_unknown_checkpoint_and_wrong_types(client):
    unknown = client.post(f"{V1}/options", json={"sd_model_checkpoint": "dreamy.safetensors"})
    assert unknown.status_code == 422
    assert "dreamy.safetensors" in unknown.json()["detail"]
    wrong = client.post(f"{V1}/options", json={"samples_format": 5})
    assert wrong.status_code == 422 and wrong.json()["field"] == "samples_format"
    assert client.post(f"{V1}/options", json=[1]).status_code == 422
    assert client.get(f"{V1}/options").status_code == 200


def test_png_info_refuses_what_is_not_a_picture(client):
    for image in ("", "%%%", base64.b64encode(b"GIF89a truncated").decode(),
                  "https://example.com/a.png"):
        response = client.post(f"{V1}/png-info", json={"image": image})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "image"


def test_a_full_queue_answers_503_busy(tmp_path, init):
    from webui.engine import Engine

    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", device="cpu",
                    queue_size=0)
    client = TestClient(create_app(ApiService(engine, presets.PresetStore(tmp_path / "p"))),
                        raise_server_exceptions=False)
    response = client.post(f"{V1}/img2img", json={"init_images": [b64(init)]})
    assert response.status_code == 503
    assert "busy" in response.json()["detail"]
    assert response.headers["Retry-After"]


# -- the README ---------------------------------------------------------------------------------
def test_the_readme_rest_snippet_runs_against_the_studio_with_the_api(engine, tmp_path,
                                                                      monkeypatch):
    """The README's REST snippet, executed as written against a studio launched with the API
    on its own port (the gradio_client snippet has its own test in test_ui.py)."""
    import re
    from pathlib import Path

    from tests.serving import free_port
    from webui.api import mount
    from webui.ui import launch
    from webui.ui.app import build
    from webui.ui.handlers import Studio

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## REST API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    demo = build(Studio(engine))
    demo.queue(max_size=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True,
                **launch.launch_options([]))
    try:
        mount(demo.server_app, create_app(ApiService(engine, presets.PresetStore(
            tmp_path / "presets"))))
        Image.new("RGB", (64, 64), (90, 140, 200)).save(tmp_path / "photo.png")
        monkeypatch.chdir(tmp_path)
        namespace: dict = {}
        exec(code.replace("http://127.0.0.1:7860/", f"http://127.0.0.1:{port}/"), namespace)
        import requests

        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        demo.close()
    assert page.status_code == 200 and "<html" in page.text.lower()
    written = Image.open(tmp_path / "result.png")
    assert written.size == (512, 512)
    assert "Seed: 42" in written.info["parameters"]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in written.info["parameters"]


# -- a client that goes away ---------------------------------------------------------------------
def test_a_client_that_disconnects_mid_job_cancels_its_job(engine, tmp_path, init):
    """Served for real (uvicorn on loopback): the client closes its connection while its job
    samples; the job is cancelled within a few steps and the engine serves the next one."""
    import socket

    from tests.serving import served_api

    service = ApiService(engine, presets.PresetStore(tmp_path / "presets"))
    with served_api(create_app(service)) as port:
        body = json.dumps(scripting_img2img(init, steps=150, denoising_strength=1.0,
                                            width=192, height=192)).encode()
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"POST /sdapi/v1/img2img HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/json\r\nContent-Length: " + str(len(body)).encode()
                       + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 60
        while (engine.running_job() is None or engine.running_job().last_progress is None
               or engine.running_job().last_progress.step < 2):
            assert time.monotonic() < deadline, "the job never started sampling"
            time.sleep(0.02)
        job = engine.running_job()
        client.close()
        try:
            job.result(60)  # an interrupted result, or Cancelled
        except Cancelled:
            pass
        assert job.state == "cancelled"
        assert job.last_progress.step < 100  # stopped, not run to its 150th step
    assert engine.generate(JobRequest(GenerationParams(steps=2), init, save=False)).images
