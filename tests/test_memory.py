"""Memory modes decided by free VRAM (the GPU is simulated: this machine has none)."""

from __future__ import annotations

from webui.engine import memory
from webui.params import make

GiB = memory.GiB


class FakeVae:
    def __init__(self):
        self.tiling = False

    def enable_tiling(self):
        self.tiling = True

    def disable_tiling(self):
        self.tiling = False


class AttnProcessor2_0:
    pass


class SlicedAttnProcessor:
    pass


class FakeUnet:
    def __init__(self):
        self.attn_processors = {"attn1": AttnProcessor2_0()}


class FakePipe:
    """Records what the memory modes switch."""

    def __init__(self):
        self.vae, self.unet, self.offloaded = FakeVae(), FakeUnet(), False

    @property
    def slicing(self) -> bool:
        return isinstance(self.unet.attn_processors["attn1"], SlicedAttnProcessor)

    def enable_attention_slicing(self):
        self.unet.attn_processors = {"attn1": SlicedAttnProcessor()}

    def disable_attention_slicing(self):
        self.unet.attn_processors = {"attn1": AttnProcessor2_0()}

    def enable_model_cpu_offload(self, device):
        self.offloaded = True

    def remove_all_hooks(self):
        self.offloaded = False

    def to(self, device):
        self.device = device
        return self


def simulate(monkeypatch, free_gib: float, model_gib: float):
    monkeypatch.setattr(memory, "free_vram", lambda device: int(free_gib * GiB)
                        if device.startswith("cuda") else None)
    monkeypatch.setattr(memory, "model_bytes", lambda pipe: int(model_gib * GiB))


def test_a_resident_model_that_fits_is_not_offloaded(monkeypatch):
    # A 6.5 GB model on a 12 GB card leaves ~5 GB free: it already fits.
    simulate(monkeypatch, free_gib=5, model_gib=6.5)
    pipe = FakePipe()
    memory.apply(pipe, make(), "cuda", 1024 * 1024)
    assert not pipe.offloaded


def test_auto_offloads_when_the_model_cannot_fit(monkeypatch):
    # Resident, the model leaves 0.3 GB: nothing to sample with.
    simulate(monkeypatch, free_gib=0.3, model_gib=6.5)
    pipe = FakePipe()
    memory.apply(pipe, make(), "cuda", 512 * 512)
    assert pipe.offloaded and pipe.slicing  # so little free is also below the slicing threshold
    # Once offloaded, the model is off the GPU: it stays offloaded while it still cannot fit.
    memory.apply(pipe, make(), "cuda", 512 * 512)
    assert pipe.offloaded


def test_auto_tiles_large_pictures_only_when_short_of_memory(monkeypatch):
    simulate(monkeypatch, free_gib=4, model_gib=2)
    pipe = FakePipe()
    memory.apply(pipe, make(), "cuda", 2048 * 2048)
    assert pipe.vae.tiling
    memory.apply(pipe, make(), "cuda", 512 * 512)
    assert not pipe.vae.tiling


def test_explicit_settings_win_and_cpu_explains_offload(monkeypatch):
    pipe = FakePipe()
    notices = memory.apply(pipe, make(attention_slicing="on", vae_tiling="on", cpu_offload="on"),
                           "cpu", 64 * 64)
    assert pipe.slicing and pipe.vae.tiling and not pipe.offloaded
    assert any("no GPU here" in n for n in notices)


def test_a_model_too_large_for_the_card_loads_straight_into_offload(monkeypatch):
    # A 6.5 GB model with 4 GB free: moving it to the GPU would fail before any job.
    simulate(monkeypatch, free_gib=4, model_gib=6.5)
    pipe = memory.place(FakePipe(), "cuda", "auto")
    assert pipe.offloaded and not hasattr(pipe, "device")
    # The first job keeps it offloaded: it still cannot fit.
    memory.apply(pipe, make(), "cuda", 512 * 512)
    assert pipe.offloaded
    # Off means off: the model goes to the GPU (and a too-large one fails there, as asked).
    assert memory.place(FakePipe(), "cuda", "off").device == "cuda"


def test_a_model_that_fits_goes_to_the_gpu_unless_offload_is_on(monkeypatch):
    simulate(monkeypatch, free_gib=20, model_gib=6.5)
    fits = memory.place(FakePipe(), "cuda", "auto")
    assert fits.device == "cuda" and not fits.offloaded
    assert memory.place(FakePipe(), "cuda", "on").offloaded
    # No GPU: the CPU is where it runs, whatever the setting.
    on_cpu = memory.place(FakePipe(), "cpu", "on")
    assert on_cpu.device == "cpu" and not on_cpu.offloaded
