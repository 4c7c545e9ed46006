"""Model sources: the models folder scan, diffusers folders, fp16 variants, pickle refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.engine.core import Engine
from webui.engine.models import ModelRegistry, _has_fp16_variant, load
from webui.errors import ModelError
from webui.params import make
from webui.tiny import build_pipeline


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "Stable-diffusion"
    pipe = build_pipeline("tiny-random")
    pipe.save_pretrained(checkpoints / "tiny-folder")
    pipe.save_pretrained(checkpoints / "tiny-half", variant="fp16")
    (checkpoints / "old.ckpt").write_bytes(b"not loaded")
    return root


def test_scan_lists_folders_not_their_weight_files(models_dir):
    registry = ModelRegistry(models_dir)
    names = registry.names()
    assert names[:2] == ["tiny-folder", "tiny-half"]
    assert not any(name.startswith("old") for name in names) and "tiny-random" in names
    assert registry.default_name() == "tiny-folder"
    assert registry.resolve("tiny-folder").kind == "folder"


def test_folder_model_matches_the_built_in_one(models_dir, make_image, tmp_path):
    image = make_image(64, 64, seed=2)
    params = dict(prompt="a hill", steps=4, seed=9, pag_scale=0.0)
    engine = Engine(models_dir=models_dir, outputs_dir=tmp_path, device="cpu")
    assert engine.model == "tiny-folder"
    from_folder = engine.generate(make(**params), image, save=False)
    built_in = engine.generate(make(model="tiny-random", **params), image, save=False)
    assert np.array_equal(np.asarray(from_folder.images[0].image),
                          np.asarray(built_in.images[0].image))
    assert from_folder.model == "tiny-folder"


def test_fp16_variant_is_detected(models_dir):
    checkpoints = models_dir / "Stable-diffusion"
    assert _has_fp16_variant(checkpoints / "tiny-half", torch.float16)
    assert not _has_fp16_variant(checkpoints / "tiny-half", torch.float32)
    assert not _has_fp16_variant(checkpoints / "tiny-folder", torch.float16)
    pipe, family = load(ModelRegistry(models_dir).resolve("tiny-half"), torch.float16)
    assert pipe.unet.dtype == torch.float16 and family == "sd1"


def test_pickle_checkpoint_refused_by_path(models_dir):
    with pytest.raises(ModelError, match="pickle"):
        ModelRegistry(models_dir).resolve(str(models_dir / "Stable-diffusion" / "old.ckpt"))


def test_folder_without_model_index_refused(tmp_path):
    (tmp_path / "loose").mkdir()
    with pytest.raises(ModelError, match="model_index.json"):
        ModelRegistry(tmp_path).resolve(str(tmp_path / "loose"))


def test_environment_names_the_default_model(models_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("IMG2IMG_MODEL", "tiny-random-xl")
    assert Engine(models_dir=models_dir, outputs_dir=tmp_path).model == "tiny-random-xl"
    assert Engine(models_dir=models_dir, outputs_dir=tmp_path, model="tiny-random").model == \
        "tiny-random"
