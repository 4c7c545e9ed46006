"""Tiny adapter files for the tiny models: LoRAs, IP-Adapters and ControlNets, written offline.

Tests and demos need real files in the real on-disk formats, and nothing may be downloaded. Every
builder derives its shapes from the pipeline it is given, so the same code serves the tiny SD1
and SDXL models (and a LoRA built from one family is a handy "wrong base model" file for the
other). Weights come from a fixed seed; the builders never change the pipeline they read.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
IP_WEIGHT_NAME = "ip-adapter_tiny.safetensors"


def _lora_state(pipe, rank: int, alpha: float, seed: int, component: str = "unet",
                targets: tuple[str, ...] = LORA_TARGETS):
    """(peft state dict, adapter config dict) for a LoRA on a copy of `pipe.<component>`."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # A deep copy, so the artist's pipeline never sees a half-added adapter, even on failure.
    unet = copy.deepcopy(getattr(pipe, component))
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                        target_modules=list(targets))
    torch.manual_seed(seed)
    unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    generator = torch.Generator().manual_seed(seed + 1)
    for key, tensor in state.items():
        if "lora_B" in key:
            # peft starts lora_B at zero (a no-op LoRA); a visible effect needs non-zero weights.
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    metadata = unet.peft_config["default"].to_dict()
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    del unet
    return state, metadata


def make_lora(pipe, path, rank: int = 4, fmt: str = "diffusers", seed: int = 0,
              alpha: float | None = None, text_encoder: bool = False,
              targets: tuple[str, ...] = LORA_TARGETS) -> Path:
    """Write a LoRA for `pipe.unet` to `path` (a .safetensors file) and return the path.

    fmt "diffusers": the library's own layout with the adapter metadata (which carries alpha);
    fmt "kohya" (alias "trainer"): `lora_unet_<module_path>.lora_down/.lora_up/.alpha`, the
    layout most LoRA trainers write.
    alpha defaults to rank / 2, so a loader that drops alpha gives a visibly different output.
    text_encoder (diffusers only): also a LoRA on the text encoder's query projections.
    targets: the UNet's layers it changes (module name endings).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a LoRA file must end in .safetensors")
    if fmt not in ("diffusers", "kohya", "trainer"):
        raise ValueError(f"unknown LoRA format {fmt!r}; use 'diffusers' or 'kohya'")
    alpha = rank / 2 if alpha is None else alpha
    state, metadata = _lora_state(pipe, rank, alpha, seed, targets=targets)
    path.parent.mkdir(parents=True, exist_ok=True)
    if text_encoder and fmt != "diffusers":
        raise ValueError("text_encoder LoRA parts are written in the diffusers layout only")
    if fmt == "diffusers":
        extra = {}
        if text_encoder:
            te_state, te_metadata = _lora_state(pipe, rank, alpha, seed + 2, "text_encoder",
                                                ("q_proj",))
            extra = {"text_encoder_lora_layers": te_state,
                     "text_encoder_lora_adapter_metadata": te_metadata}
        # Without the adapter metadata the loader assumes alpha = rank and the effect is wrong.
        type(pipe).save_lora_weights(
            save_directory=str(path.parent), unet_lora_layers=state, weight_name=path.name,
            unet_lora_adapter_metadata=metadata, **extra,
        )
        return path
    trainer = {}
    import torch

    for key, tensor in state.items():
        module, _, rest = key.rpartition(".lora_")
        prefix = "lora_unet_" + module.replace(".", "_")
        if rest.startswith("A."):
            trainer[f"{prefix}.lora_down.weight"] = tensor
            trainer[f"{prefix}.alpha"] = torch.tensor(float(alpha))
        else:
            trainer[f"{prefix}.lora_up.weight"] = tensor
    save_file(trainer, str(path), metadata={"ss_network_dim": str(rank),
                                           "ss_network_alpha": str(alpha)})
    return path


def _tiny_image_encoder(projection_dim: int, seed: int):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, image_size=32, patch_size=4, num_channels=3,
    )
    return CLIPVisionModelWithProjection(config).eval()


def make_ip_adapter(pipe, folder, seed: int = 0, subfolder: str = "models",
                    weight_name: str = IP_WEIGHT_NAME, image_encoder: bool = True) -> Path:
    """Write a tiny IP-Adapter for `pipe.unet` into `folder` and return `folder`.

    Layout: `folder/<subfolder>/<weight_name>` (flat `image_proj.*` / `ip_adapter.*` keys) and
    `folder/<subfolder>/image_encoder/` (a CLIP vision model with projection, safetensors). The
    image processor is not written: the loader builds one from the encoder's image size.
    image_encoder=False leaves the encoder out (to test the error for a missing encoder).
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    unet = pipe.unet
    cross = unet.config.cross_attention_dim
    proj_dim = 16
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(shape, generator=generator) * 0.3).contiguous()

    state = {
        "image_proj.proj.weight": rand(4 * cross, proj_dim),
        "image_proj.proj.bias": rand(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    channels = list(unet.config.block_out_channels)
    # The loader numbers the processors 0, 1, 2, ... in attn_processors order and reads the
    # cross-attention ones (odd numbers, after their self-attention) from the file.
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        state[f"ip_adapter.{index}.to_k_ip.weight"] = rand(hidden, cross)
        state[f"ip_adapter.{index}.to_v_ip.weight"] = rand(hidden, cross)
    save_file(state, str(target / weight_name))
    if image_encoder:
        _tiny_image_encoder(proj_dim, seed).save_pretrained(
            str(target / "image_encoder"), safe_serialization=True)
    return folder


def make_controlnet(pipe, folder, seed: int = 0, single_file: bool = False) -> Path:
    """Write a ControlNet derived from `pipe.unet` and return its folder (or file).

    The encoder half is copied from the UNet, as training starts; the zero convolutions get
    small random weights so the control image visibly changes the result.
    single_file=True writes one `<folder>.safetensors` file (diffusers key layout) with its config
    beside it as `<folder>.json`; delete the JSON to test a loader that derives the config.
    """
    import torch
    from diffusers import ControlNetModel

    unet = pipe.unet
    if any("IPAdapter" in type(p).__name__ for p in unet.attn_processors.values()):
        # from_unet copies the attention processors, and IP-Adapter ones cannot be copied.
        raise ValueError("unload the IP-Adapter from this pipeline before building a ControlNet")
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name or \
                    "controlnet_cond_embedding.conv_out" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    folder = Path(folder)
    if not single_file:
        controlnet.save_pretrained(str(folder), safe_serialization=True)
        return folder
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(dict(controlnet.config), indent=1))
    return path


def make_depth_detector(folder, seed: int = 0, metric: bool = False) -> Path:
    """Write a tiny Depth Anything depth-estimation model (random weights) and its processor.

    metric=True marks it as a metric-depth model (far = large), which the depth map inverts.
    """
    import torch
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=37, image_size=28, patch_size=14,
                            out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 patch_size=14, neck_hidden_sizes=[16, 32, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=16,
                                 depth_estimation_type="metric" if metric else "relative")
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                      ensure_multiple_of=14).save_pretrained(str(folder))
    return folder


def make_pose_detector(folder, seed: int = 0, person_box=None) -> Path:
    """Write a tiny ViTPose model (17 COCO keypoints, random weights) and its processor.

    Its heatmaps are lifted so that every keypoint is confident enough to be drawn. person_box:
    (x, y, width, height) as fractions of the picture: also write a tiny person detector in
    `person-detector/` that finds exactly that box.
    """
    import torch
    from transformers import (VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation,
                              VitPoseImageProcessor)

    backbone = VitPoseBackboneConfig(image_size=[32, 24], patch_size=[8, 8], hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, out_indices=[2])
    config = VitPoseConfig(backbone_config=backbone, scale_factor=4, use_simple_decoder=True,
                           num_labels=17)
    torch.manual_seed(seed)
    model = VitPoseForPoseEstimation(config).eval()
    with torch.no_grad():
        model.head.conv.bias.fill_(1.0)
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    VitPoseImageProcessor(size={"height": 32, "width": 24}).save_pretrained(str(folder))
    if person_box is not None:
        _person_detector(folder / "person-detector", person_box, seed)
    return folder


def _person_detector(folder: Path, box, seed: int) -> None:
    """A tiny DETR whose every query reports one confident 'person' at `box` (fractions)."""
    import math

    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 8, 8],
                            depths=[1, 1, 1, 1], out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                        use_pretrained_backbone=False, d_model=16, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=2,
                        id2label={0: "person", 1: "cat"}, label2id={"person": 0, "cat": 1})
    torch.manual_seed(seed)
    model = DetrForObjectDetection(config).eval()
    x, y, w, h = box
    # The head predicts sigmoid(bias): keep each value inside (0, 1).
    centre = [min(max(v, 1e-3), 1 - 1e-3) for v in (x + w / 2, y + h / 2, w, h)]
    with torch.no_grad():
        # Zero weights make the heads ignore the picture: the biases alone give the answer.
        classifier = model.class_labels_classifier
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([8.0, -8.0, -8.0]))
        last = model.bbox_predictor.layers[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.log(v / (1 - v)) for v in centre]))
    model.save_pretrained(str(folder), safe_serialization=True)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(str(folder))
