"""Memory modes: attention slicing, VAE tiling and model CPU offload, each on, off or auto.

auto decides from the free VRAM at the time of the job, so a studio shared by several people
adapts when another process holds memory. On the CPU the GPU-only modes are explained in the
result's notice instead of failing.
"""

from __future__ import annotations

import torch

GiB = 1024**3
# Below this much free VRAM, slice attention (the UNet's largest transient buffers).
SLICE_BELOW = 4 * GiB
# Decoding a 2048x2048 picture needs several GB in the VAE; tile above this many pixels when
# free VRAM is also short.
TILE_ABOVE_PIXELS = 1536 * 1536
TILE_BELOW = 8 * GiB


def free_vram(device: str) -> int | None:
    """Free bytes on a CUDA device, None elsewhere."""
    if not device.startswith("cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return free


def model_bytes(pipe) -> int:
    total = 0
    for module in pipe.components.values():
        if hasattr(module, "parameters"):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def place(pipe, device: str, cpu_offload: str = "auto"):
    """Put a freshly loaded pipeline (on the CPU) where it runs, before any job: on `device`, or
    straight into model CPU offload when it is on, or (auto) when the model does not fit in the
    free VRAM, so a model too large for the card still loads instead of failing on the way in.
    Returns the pipeline."""
    free = free_vram(device)
    offload = free is not None and (
        cpu_offload == "on" or (cpu_offload == "auto" and model_bytes(pipe) > free * 0.9))
    if offload:
        pipe.enable_model_cpu_offload(device=device)
        _state(pipe)["offload"] = True
        return pipe
    return pipe.to(device)


SLICING_WITH_IP_ADAPTER = ("attention slicing is off while an IP-Adapter is loaded (the two "
                           "cannot be combined)")


def offloaded(pipe) -> bool:
    """Whether model CPU offload is on for this pipeline now."""
    return _state(pipe)["offload"]


def _state(pipe) -> dict:
    if not hasattr(pipe, "_webui_memory"):
        pipe._webui_memory = {"tiling": False, "offload": False}
    return pipe._webui_memory


def _processor_names(pipe) -> list[str]:
    return [type(p).__name__ for p in pipe.unet.attn_processors.values()]


def attention_sliced(pipe) -> bool:
    """Whether sliced attention is installed now. Read from the UNet's processors, not
    remembered: loading or removing an IP-Adapter replaces them behind this module's back."""
    return any(name.startswith("Sliced") for name in _processor_names(pipe))


def apply(pipe, params, device: str, pixels: int) -> list[str]:
    """Set the three modes on `pipe` for this job; returns notices for the artist. Call it
    after the adapters are set for the job, so that slicing sees the IP-Adapter's processors."""
    notices: list[str] = []
    state = _state(pipe)
    free = free_vram(device)
    on_gpu = free is not None

    slicing = params.attention_slicing == "on" or (
        params.attention_slicing == "auto" and on_gpu and free < SLICE_BELOW)
    if slicing and any("IPAdapter" in name for name in _processor_names(pipe)):
        # Sliced processors would replace the IP-Adapter's own, dropping it silently.
        notices.append(SLICING_WITH_IP_ADAPTER)
    elif slicing != attention_sliced(pipe):
        pipe.enable_attention_slicing() if slicing else pipe.disable_attention_slicing()

    tiling = params.vae_tiling == "on" or (
        params.vae_tiling == "auto" and on_gpu and pixels > TILE_ABOVE_PIXELS and free < TILE_BELOW)
    if tiling != state["tiling"]:
        pipe.vae.enable_tiling() if tiling else pipe.vae.disable_tiling()
        state["tiling"] = tiling

    if params.cpu_offload == "auto" and on_gpu:
        # Free VRAM does not count the model while it sits on the GPU; offload when the model
        # takes nearly all the memory there is for it, leaving nothing to sample with.
        size = model_bytes(pipe)
        resident = 0 if state["offload"] else size
        offload = size > (free + resident) * 0.9
    else:
        offload = params.cpu_offload == "on"
    if offload and not on_gpu:
        if params.cpu_offload == "on":
            notices.append("CPU offload moves the model between a GPU and the CPU; there is no "
                           "GPU here, so it is off")
        offload = False
    if offload != state["offload"]:
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.remove_all_hooks()
            pipe.to(device)
        state["offload"] = offload
    return notices
