"""Shared fixtures: offline hub, small test images, and tiny-model engines with private outputs."""

from __future__ import annotations

import os

# Never reach a model hub from the tests; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# The tiny models are far too small to gain from threads; on a shared 2-core machine extra
# threads only contend (a 4-step job goes from ~0.1 s to several seconds).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def noise_image(width: int = 64, height: int = 64, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A reproducible random-noise picture (no two seeds alike), converted to `mode`."""
    rng = np.random.RandomState(seed)
    image = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


@pytest.fixture
def make_image():
    """make_image(width=64, height=64, seed=0, mode='RGB'): a small random test picture."""
    return noise_image


@pytest.fixture(scope="session")
def shared_engine(tmp_path_factory):
    """One Engine for the session, so the tiny model is built once; on the CPU on every machine.

    Use the `engine` fixture in tests: it gives each test its own outputs folder.
    """
    from webui.engine.core import Engine

    root = tmp_path_factory.mktemp("engine")
    engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu")
    yield engine
    engine.cancel_all()
    engine.unload()


def _settle(engine, timeout: float = 60.0) -> None:
    """Cancel whatever a test left running or waiting and wait until the worker is idle."""
    current = engine.current
    engine.cancel_all()
    if current is not None:
        current._done.wait(timeout)


@pytest.fixture
def engine(shared_engine, tmp_path):
    """The shared engine with outputs in this test's own tmp_path/outputs."""
    _settle(shared_engine)
    shared_engine.outputs_dir = tmp_path / "outputs"
    yield shared_engine
    _settle(shared_engine)


@pytest.fixture
def fresh_engine(tmp_path):
    """A new Engine that has not loaded any model (outputs in tmp_path/outputs)."""
    from webui.engine.core import Engine

    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", device="cpu")
    yield engine
    _settle(engine)
    engine.unload()


@pytest.fixture
def init():
    """A 64² picture with a clear shape (a blue square on red): enough for any tiny-model job."""
    image = Image.new("RGB", (64, 64), (200, 40, 30))
    image.paste((20, 90, 200), (16, 16, 48, 48))
    return image

