"""Depth and pose maps for ControlNet from detector models (tiny transformers models built here)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.engine.adapter_inputs import AdapterError
from webui.engine.adapters import Adapters, JobAdapters
from webui.engine.controlnet import ControlNetSpec
from webui.engine.core import Engine
from webui.engine.detectors import (
    DETECTOR_SUBDIR,
    Detectors,
    body_points,
    depth_picture,
    detector_kind,
    find_detector,
    list_detectors,
    pose_picture,
)
from webui.errors import InputError
from webui.params import ControlNetUnit, make
from webui.tiny import build_pipeline

from tests.support.tiny_adapters import make_controlnet, make_depth_detector, make_pose_detector

# The 18 body colours: joints use them, limbs 60 % of them.
PALETTE = {(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
           (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
           (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)}
LIMB_SHADES = {tuple(int(c * 0.6) for c in colour) for colour in PALETTE}


def _picture(width: int = 48, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A models/ControlNet-preprocessors folder with tiny depth and pose detectors."""
    folder = tmp_path_factory.mktemp("models") / DETECTOR_SUBDIR
    make_depth_detector(folder / "depth-tiny", seed=0)
    make_depth_detector(folder / "metric-depth", seed=0, metric=True)
    make_pose_detector(folder / "pose-tiny", seed=1)
    # One person in the top-left quarter of the picture.
    make_pose_detector(folder / "people" / "pose-with-person", seed=1,
                       person_box=(0.0, 0.0, 0.25, 0.25))
    (folder / "not-a-detector").mkdir()
    (folder / "not-a-detector" / "config.json").write_text('{"model_type": "bert"}')
    return folder


@pytest.fixture(scope="module")
def detectors():
    return Detectors("cpu")


def test_detectors_are_listed_by_kind_from_their_config(root):
    found = list_detectors(root)
    assert {name: kind for name, (kind, _) in found.items()} == {
        "depth-tiny": "depth", "metric-depth": "depth", "people/pose-with-person": "pose",
        "pose-tiny": "pose"}  # the person detector inside a pose folder is part of it
    assert detector_kind(root / "not-a-detector") is None
    assert find_detector(root, "depth") == root / "depth-tiny"  # empty name: the first
    assert find_detector(root, "pose", "pose-tiny") == root / "pose-tiny"
    assert find_detector(root, "pose", str(root / "pose-tiny")) == root / "pose-tiny"
    with pytest.raises(ValueError, match="depth-tiny is a depth model, not a ViTPose"):
        find_detector(root, "pose", "depth-tiny")
    with pytest.raises(ValueError, match="no detector model 'gone'.*available in"):
        find_detector(root, "depth", "gone")
    with pytest.raises(ValueError, match=r"needs a depth-estimation model .*put its transformers"):
        find_detector(root.parent / "empty", "depth")
    with pytest.raises(ValueError, match="needs no detector"):
        find_detector(root, "canny")


def test_depth_map_is_near_white_far_black():
    depth = np.tile(np.linspace(1.0, 5.0, 16), (8, 1))  # grows to the right
    near_left = np.asarray(depth_picture(depth))
    assert near_left.shape == (8, 16, 3) and (near_left[..., 0] == near_left[..., 2]).all()
    assert near_left[0, 0, 0] == 0 and near_left[0, -1, 0] == 255
    inverted = np.asarray(depth_picture(depth, invert=True))
    assert inverted[0, 0, 0] == 255 and inverted[0, -1, 0] == 0
    assert (np.asarray(depth_picture(np.ones((4, 4)))) == 0).all()  # flat: no NaN, all black


def test_depth_detectors_draw_a_grey_map_at_the_picture_size(root, detectors, tmp_path):
    picture = _picture()
    relative = detectors.control_map(root / "depth-tiny", "depth", picture)
    pixels = np.asarray(relative)
    assert relative.size == picture.size and relative.mode == "RGB"
    assert (pixels[..., 0] == pixels[..., 1]).all() and pixels.min() == 0 and pixels.max() == 255
    # Metric models predict distance, so their map is inverted to keep near = white.
    assert detectors._get(root / "metric-depth", "depth")["invert"]
    assert not detectors._get(root / "depth-tiny", "depth")["invert"]
    # Loaded once, kept between calls; a changed weight file is read again.
    loads = detectors.load_calls
    again = detectors.control_map(root / "depth-tiny", "depth", picture)
    assert detectors.load_calls == loads and np.array_equal(np.asarray(again), pixels)
    copy = tmp_path / "depth-copy"
    shutil.copytree(root / "depth-tiny", copy)
    assert np.array_equal(np.asarray(detectors.control_map(copy, "depth", picture)), pixels)
    make_depth_detector(copy, seed=5)
    changed = np.asarray(detectors.control_map(copy, "depth", picture))
    assert detectors.load_calls == loads + 2 and not np.array_equal(changed, pixels)


def test_pose_skeleton_follows_the_keypoints():
    # A standing figure: COCO keypoints (nose, eyes, ears, shoulders, elbows, ...).
    coco = np.array([[32, 10], [34, 8], [30, 8], [36, 9], [28, 9], [40, 20], [24, 20],
                     [44, 32], [20, 32], [46, 44], [18, 44], [38, 44], [26, 44], [38, 56],
                     [26, 56], [38, 62], [26, 62]], dtype=float)
    scores = np.ones(17)
    scores[9] = 0.1  # the left wrist is unsure: not drawn
    points = body_points(coco, scores)
    assert points[1] == (32.0, 20.0)  # the neck: between the shoulders
    assert points[2] == (24.0, 20.0) and points[5] == (40.0, 20.0)  # right, left shoulder
    assert points[7] is None
    pose = pose_picture((64, 64), [points])
    pixels = np.asarray(pose)
    assert tuple(pixels[10, 32]) == (255, 0, 0)  # the nose joint, full colour
    assert tuple(pixels[20, 28]) == (153, 0, 0)  # neck to right shoulder: limb 0 at 60 %
    colours = {tuple(c) for c in pixels.reshape(-1, 3)} - {(0, 0, 0)}
    assert colours <= PALETTE | LIMB_SHADES
    assert tuple(pixels[44, 46]) == (0, 0, 0)  # nothing where the unsure wrist would be


def test_pose_detector_draws_one_skeleton_per_person(root, detectors):
    picture = _picture(64, 64)
    whole = np.asarray(detectors.control_map(root / "pose-tiny", "pose", picture))
    drawn = whole.any(axis=-1)
    assert drawn.sum() > 50
    assert {tuple(c) for c in whole[drawn]} <= PALETTE | LIMB_SHADES
    # With a person detector only the person found (top-left quarter, plus the pose model's
    # margin around its box) is posed.
    boxed = np.asarray(detectors.control_map(root / "people" / "pose-with-person", "pose",
                                             picture)).any(axis=-1)
    assert boxed.sum() > 20
    ys, xs = np.nonzero(boxed)
    assert xs.max() < 26 and ys.max() < 26


def test_unusable_detector_folders_are_refused_clearly(root, tmp_path, detectors):
    pickled = tmp_path / "pickled"
    shutil.copytree(root / "depth-tiny", pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no .safetensors weights.*pickles"):
        detectors.control_map(pickled, "depth", _picture())
    with pytest.raises(ValueError, match="is a depth model, so it cannot make a pose map"):
        detectors.control_map(root / "depth-tiny", "pose", _picture())
    broken = tmp_path / "broken"
    shutil.copytree(root / "depth-tiny", broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="could not load the detector model"):
        detectors.control_map(broken, "depth", _picture())


def test_adapters_give_the_controlnet_the_detector_map(root, tmp_path):
    pipe = build_pipeline("tiny-random")
    pipe.set_progress_bar_config(disable=True)
    controlnet = make_controlnet(pipe, tmp_path / "cn", seed=2)
    adapters = Adapters(pipe, tmp_path / "Lora")
    picture = _picture(64, 64)
    for kind, folder in (("depth", root / "depth-tiny"), ("pose", root / "pose-tiny")):
        spec = ControlNetSpec(str(controlnet), image=picture, preprocessor=kind,
                              detector=str(folder))
        _, kwargs = adapters.prepare(JobAdapters(image=picture, controlnets=[spec]))
        expected = adapters.detectors.control_map(folder, kind, picture)
        assert np.array_equal(np.asarray(kwargs["control_image"]), np.asarray(expected))
    with pytest.raises(AdapterError, match="needs its detector model folder"):
        adapters.prepare(JobAdapters(image=picture, controlnets=[
            ControlNetSpec(str(controlnet), picture, preprocessor="pose")]))


def test_engine_names_the_detector_it_used_and_explains_a_missing_one(root, tmp_path):
    controlnet = make_controlnet(build_pipeline("tiny-random"), tmp_path / "cn", seed=2)
    engine = Engine(models_dir=root.parent, outputs_dir=tmp_path / "out", device="cpu",
                    model="tiny-random")
    bare = Engine(models_dir=tmp_path / "no-models", outputs_dir=tmp_path / "out", device="cpu",
                  model="tiny-random")
    try:
        values = dict(prompt="a dancer", steps=2, strength=0.5, seed=3, pag_scale=0.0)
        unit = ControlNetUnit(model=str(controlnet), preprocessor="pose")
        result = engine.generate(make(**values, controlnets=[unit]), _picture(64, 64),
                                 save=False)
        assert result.params.controlnets[0].detector == "people/pose-with-person"
        assert "detector: people/pose-with-person" in result.images[0].infotext
        # Canny needs no detector: a stray name is not written as if it had been used.
        unit = ControlNetUnit(model=str(controlnet), detector="depth-tiny")
        result = engine.generate(make(**values, controlnets=[unit]), _picture(64, 64),
                                 save=False)
        assert result.params.controlnets[0].detector == ""
        with pytest.raises(InputError, match="ControlNet 1: preprocessor 'depth' needs a depth-"
                           "estimation model") as info:
            bare.generate(make(**values, controlnets=[{"model": str(controlnet),
                                                       "preprocessor": "depth"}]),
                          _picture(64, 64), save=False)
        assert info.value.field == "controlnets[0].detector"
        preview = engine.control_preview(_picture(), "depth", "depth-tiny")
        assert preview.size == (48, 64)
        with pytest.raises(InputError, match="no detector model 'x'") as info:
            engine.control_preview(_picture(), "pose", "x")
        assert info.value.field == "detector"
    finally:
        engine.unload()
        bare.unload()


def test_canny_needs_no_detector_and_depth_does():
    # canny stays model-free beside the detectors: the same entry point, no detector needed.
    from webui.engine.controlnet import control_image

    image = Image.new("RGB", (32, 32), (30, 30, 30))
    ImageDraw.Draw(image).rectangle((8, 8, 23, 23), fill=(220, 220, 220))
    edges = np.asarray(control_image(image, "canny"))
    assert edges.max() == 255 and not edges[14:18, 14:18].any()
    with pytest.raises(ValueError, match="needs a detector model"):
        control_image(image, "depth")
