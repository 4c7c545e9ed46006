"""Test helpers: write tiny pipelines (and ControlNets) as original-layout single-file
checkpoints.

The mapping below is the inverse of the library's single-file converters, derived from each model's
own structure (block counts, layers per block, which blocks carry attention), so it fits the tiny
models as well as full-size ones.
"""

from __future__ import annotations

from pathlib import Path

# UNet ResNet sub-layers, diffusers name -> original name (VAE ResNets keep theirs bar the shortcut).
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2", "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    raise ValueError(f"no original-layout name for {rest!r}")


def _unet_block_key(key: str, per_block: int, up_with_attention: set[str]) -> str:
    parts = key.split(".")
    param = parts[-1]
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        # The middle block alternates resnet, attention, resnet.
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"middle_block.{2 * index + 1}.{rest}"
    elif parts[0] in ("down_blocks", "up_blocks"):
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if parts[0] == "down_blocks":
            # input_blocks.0 is conv_in; each level then holds `per_block` layers and a downsampler.
            first = 1 + block * (per_block + 1)
            if kind == "resnets":
                return f"input_blocks.{first + index}.0.{_rename_head(rest, _UNET_RESNET)}"
            if kind == "attentions":
                return f"input_blocks.{first + index}.1.{rest}"
            if kind == "downsamplers":
                return f"input_blocks.{first + per_block}.0.op.{param}"
        else:
            # Up levels hold one layer more; the upsampler follows the attention when there is one.
            first = block * (per_block + 1)
            if kind == "resnets":
                return f"output_blocks.{first + index}.0.{_rename_head(rest, _UNET_RESNET)}"
            if kind == "attentions":
                return f"output_blocks.{first + index}.1.{rest}"
            if kind == "upsamplers":
                slot = 2 if parts[1] in up_with_attention else 1
                return f"output_blocks.{first + per_block}.{slot}.conv.{param}"
    raise ValueError(f"no original-layout name for UNet weight {key}")


def unet_to_original(unet) -> dict:
    """UNet2DConditionModel weights under original (`input_blocks` / `output_blocks`) names."""
    per_block = unet.config.layers_per_block
    if not isinstance(per_block, int):
        raise ValueError("the original layout needs the same layers_per_block for every block")
    state = unet.state_dict()
    up_with_attention = {k.split(".")[1] for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module in _UNET_TOP:
            out[f"{_UNET_TOP[module]}.{param}"] = value
        else:
            out[_unet_block_key(key, per_block, up_with_attention)] = value
    return out


def vae_to_original(vae) -> dict:
    """AutoencoderKL weights under original (`encoder.down` / `decoder.up`) names.

    The original mid-block attention is built from 1x1 convolutions, so its projection weights are
    stored as [C, C, 1, 1].
    """
    levels = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        side, _, rest = key.partition(".")
        if side in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        parts = rest.split(".")
        if parts[0] in ("conv_in", "conv_out"):
            out[key] = value
        elif parts[0] == "conv_norm_out":
            out[f"{side}.norm_out.{parts[1]}"] = value
        elif parts[0] == "mid_block" and parts[1] == "resnets":
            name = f"{side}.mid.block_{int(parts[2]) + 1}.{'.'.join(parts[3:])}"
            out[name.replace("conv_shortcut", "nin_shortcut")] = value
        elif parts[0] == "mid_block" and parts[1] == "attentions":
            tail = _rename_head(".".join(parts[3:]), _VAE_ATTENTION)
            if value.ndim == 2:
                value = value[:, :, None, None]
            out[f"{side}.mid.attn_1.{tail}"] = value
        elif parts[0] in ("down_blocks", "up_blocks"):
            # The original decoder numbers its levels from the bottom (latent) side.
            level = int(parts[1]) if parts[0] == "down_blocks" else levels - 1 - int(parts[1])
            group = "down" if parts[0] == "down_blocks" else "up"
            if parts[2] == "resnets":
                tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                out[f"{side}.{group}.{level}.block.{parts[3]}.{tail}"] = value
            elif parts[2] in ("downsamplers", "upsamplers"):
                sampler = "downsample" if group == "down" else "upsample"
                out[f"{side}.{group}.{level}.{sampler}.{'.'.join(parts[4:])}"] = value
            else:
                raise ValueError(f"no original-layout name for VAE weight {key}")
        else:
            raise ValueError(f"no original-layout name for VAE weight {key}")
    return out


def clip_to_original(text_encoder) -> dict:
    """CLIPTextModel weights as the original `transformer.text_model.*` (prefix added by caller)."""
    # Newer transformers flattens CLIPTextModel; the original layout keeps the `text_model.` level.
    return {
        (k if k.startswith("text_model.") else f"text_model.{k}"): v
        for k, v in text_encoder.state_dict().items()
        if not k.startswith("text_projection")
    }


def open_clip_to_original(text_encoder) -> dict:
    """CLIP text weights in the OpenCLIP layout (fused qkv; projection, if any, as [in, out])."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        # OpenCLIP multiplies by the projection from the right: store it transposed.
        out["text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for n in sorted(layers):
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for param in ("weight", "bias"):
            qkv = [state.pop(f"{src}self_attn.{p}_proj.{param}") for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(qkv, dim=0)
        for key in [k for k in state if k.startswith(src)]:
            out[dst + _rename_head(key[len(src):], _CLIP_LAYER)] = state.pop(key)
    if state:
        raise ValueError(f"no OpenCLIP name for {sorted(state)}")
    return out


def to_original_state_dict(pipe, family: str | None = None) -> dict:
    """All weights of a pipeline under their single-file checkpoint names.

    `family` is "sd1", "sd2" (the text encoder in the OpenCLIP layout) or "sdxl"; by default "sdxl"
    for two-encoder pipelines, else "sd1".
    """
    is_xl = getattr(pipe, "text_encoder_2", None) is not None
    family = family or ("sdxl" if is_xl else "sd1")
    if (family == "sdxl") != is_xl or family not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"cannot write a {type(pipe).__name__} as family {family!r}")
    parts = [("model.diffusion_model.", unet_to_original(pipe.unet)),
             ("first_stage_model.", vae_to_original(pipe.vae))]
    if family == "sdxl":
        parts += [("conditioner.embedders.0.transformer.", clip_to_original(pipe.text_encoder)),
                  ("conditioner.embedders.1.model.", open_clip_to_original(pipe.text_encoder_2))]
    elif family == "sd2":
        parts.append(("cond_stage_model.model.", open_clip_to_original(pipe.text_encoder)))
    else:
        parts.append(("cond_stage_model.transformer.", clip_to_original(pipe.text_encoder)))
    # Cloning breaks storage sharing (tied or sliced tensors), which safetensors refuses to save.
    return {prefix + k: v.detach().clone().contiguous() for prefix, sd in parts for k, v in sd.items()}


def save_single_file(pipe, path, *, family: str | None = None, metadata: dict | None = None,
                     markers: tuple[str, ...] = ()) -> Path:
    """Write `pipe` (e.g. from `webui.tiny.build_pipeline`) as one original-layout `.safetensors`.

    `family` as in `to_original_state_dict`; "sd2" writes an SD1-shaped pipeline the SD2 way.
    metadata: the file's header metadata (e.g. {"modelspec.prediction_type": "v"});
    markers: empty marker tensors some trainers add ("v_pred", "ztsnr").
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = to_original_state_dict(pipe, family)
    state.update({name: torch.tensor([]) for name in markers})
    save_file(state, str(path), metadata=metadata)
    return path


def controlnet_to_original(controlnet) -> dict:
    """ControlNetModel weights under the original names (`control_model.input_blocks`,
    `zero_convs`, `input_hint_block`, `middle_block_out`), as original ControlNet files hold them.

    The encoder half is named as in the UNet; the hint encoder alternates convolutions and
    activations, so its k-th convolution is `input_hint_block.{2k}`.
    """
    per_block = controlnet.config.layers_per_block
    if not isinstance(per_block, int):
        raise ValueError("the original layout needs the same layers_per_block for every block")
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    out = {}
    for key, value in controlnet.state_dict().items():
        module, param = key.rsplit(".", 1)
        parts = module.split(".")
        if module in _UNET_TOP:
            name = f"{_UNET_TOP[module]}.{param}"
        elif parts[0] == "controlnet_down_blocks":
            name = f"zero_convs.{parts[1]}.0.{param}"
        elif module == "controlnet_mid_block":
            name = f"middle_block_out.0.{param}"
        elif module == "controlnet_cond_embedding.conv_in":
            name = f"input_hint_block.0.{param}"
        elif parts[:2] == ["controlnet_cond_embedding", "blocks"]:
            name = f"input_hint_block.{2 * (int(parts[2]) + 1)}.{param}"
        elif module == "controlnet_cond_embedding.conv_out":
            name = f"input_hint_block.{2 * (hint_blocks + 1)}.{param}"
        else:
            name = _unet_block_key(key, per_block, set())
        out["control_model." + name] = value.detach().clone().contiguous()
    return out


def save_controlnet_single_file(controlnet, path) -> Path:
    """Write a ControlNet as one original-layout .safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(controlnet_to_original(controlnet), str(path))
    return path


def tiny_inpainting_pipeline(kind: str = "tiny-random"):
    """A tiny pipeline whose UNet is an inpainting one (9 input channels: latents, mask and the
    masked picture), as inpainting checkpoints have; the rest as in the built-in model."""
    import torch
    from diffusers import UNet2DConditionModel

    from webui.tiny import TINY_SDXL, build_pipeline

    pipe = build_pipeline(kind)
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    config["in_channels"] = 9
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval()
    components = {**pipe.components, "unet": unet}
    if kind != TINY_SDXL:
        components["requires_safety_checker"] = False
    return type(pipe)(**components)


def png_header(width: int, height: int) -> bytes:
    """The start of a 1-bit PNG claiming `width` x `height`: enough for Pillow to open it (what
    a decompression bomb sends)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT"
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", 0) + idat
            + struct.pack(">I", zlib.crc32(idat)))
