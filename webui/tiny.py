"""The built-in `tiny-random` models: real pipeline classes with tiny random weights.

They exist so the studio, the CLI, the tests and the benchmark run with no download. The weights
come from a fixed seed, so every process builds byte-identical models; the pictures are noise.
Shapes follow diffusers' own pipeline tests: small enough that a 64x64 img2img takes well under
a second on a laptop CPU, yet every code path of a real SD1.x / SDXL checkpoint is exercised.
"""

from __future__ import annotations

TINY_SD = "tiny-random"
TINY_SDXL = "tiny-random-xl"
TINY_MODELS = (TINY_SD, TINY_SDXL)
# Random weights in the real SD1.5 / SDXL layer shapes: the same FLOPs and memory as a real
# checkpoint, so the benchmark's figures are honest without any download. Not in the picker.
FULL_SIZE_MODELS = ("random-sd15", "random-sdxl")

# The CLIP tokenizer's byte-level alphabet. transformers 5 no longer exports it, and we need it to
# build a tokenizer without downloading one.
def _byte_alphabet() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tokenizer():
    """A working CLIP tokenizer with a byte-level vocabulary (no merges), built offline.

    The vocabulary is passed as a dict: transformers 5 silently ignores `vocab_file=` and
    `merges_file=`, and the tokenizer then knows only its special tokens, so every prompt
    becomes the same unknown tokens and the model ignores the prompt.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # Without model_max_length the limit is 1e30 and encoding overflows.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=1000,
        max_position_embeddings=77,
        hidden_act="gelu",
        **extra,
    )


def _vae():
    from diffusers import AutoencoderKL

    # Four blocks so the latent is 1/8 of the image, as with every real SD VAE.
    return AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        # The real SDXL VAE upcasts to fp32 because it overflows in fp16; this one does not.
        force_upcast=False,
    )


def _scheduler():
    from diffusers import EulerAncestralDiscreteScheduler

    # The scheduler config every SD1.x checkpoint ships.
    return EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )


def get_dummy_components(kind: str = TINY_SD) -> dict:
    """The components of a tiny pipeline, randomly initialised from a fixed seed."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if kind not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of {', '.join(TINY_MODELS)}")
    # Seeding happens before each module so a component's weights never depend on the others.
    if kind == TINY_SD:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            norm_num_groups=32,
        )
        torch.manual_seed(0)
        vae = _vae()
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(_text_config())
        components = {
            "unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": build_tokenizer(),
            "scheduler": _scheduler(), "safety_checker": None, "feature_extractor": None,
            "image_encoder": None,
        }
    else:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=32,
        )
        torch.manual_seed(0)
        vae = _vae()
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(_text_config(projection_dim=32))
        torch.manual_seed(0)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=32))
        components = {
            "unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": build_tokenizer(),
            "text_encoder_2": text_encoder_2, "tokenizer_2": build_tokenizer(),
            "scheduler": _scheduler(), "image_encoder": None, "feature_extractor": None,
            "requires_aesthetics_score": False, "force_zeros_for_empty_prompt": True,
        }
    for module in components.values():
        # Freshly built modules are in train mode; reloaded ones are not, and outputs differ.
        if isinstance(module, torch.nn.Module):
            module.eval()
    return components


def get_full_size_components(kind: str) -> dict:
    """Random components with the layer shapes of SD1.5 ('random-sd15') or SDXL ('random-sdxl')."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip(hidden, layers, heads, inter, act, projection=None):
        extra = {"projection_dim": projection} if projection else {}
        return CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                              intermediate_size=inter, hidden_act=act, vocab_size=49408,
                              max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                              pad_token_id=513, **extra)

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
        sample_size=1024 if kind == "random-sdxl" else 512,
        scaling_factor=0.13025 if kind == "random-sdxl" else 0.18215,
        force_upcast=kind == "random-sdxl",
    )
    if kind == "random-sd15":
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        )
        text_encoder = CLIPTextModel(clip(768, 12, 12, 3072, "quick_gelu"))
        extra = {"safety_checker": None, "feature_extractor": None, "image_encoder": None}
    elif kind == "random-sdxl":
        unet = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
            block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        text_encoder = CLIPTextModel(clip(768, 12, 12, 3072, "quick_gelu"))
        extra = {"text_encoder_2": CLIPTextModelWithProjection(clip(1280, 32, 20, 5120, "gelu", 1280)),
                 "tokenizer_2": build_tokenizer(), "image_encoder": None, "feature_extractor": None,
                 "requires_aesthetics_score": False, "force_zeros_for_empty_prompt": True}
    else:
        raise ValueError(f"unknown full-size model {kind!r}")
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder,
                  "tokenizer": build_tokenizer(), "scheduler": _scheduler(), **extra}
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return components


def build_pipeline(kind: str = TINY_SD):
    """An img2img pipeline of the same class a real checkpoint of that family loads into."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    xl = kind in (TINY_SDXL, "random-sdxl")
    if kind in FULL_SIZE_MODELS:
        components = get_full_size_components(kind)
    else:
        components = get_dummy_components(kind)
    cls = StableDiffusionXLImg2ImgPipeline if xl else StableDiffusionImg2ImgPipeline
    if cls is StableDiffusionImg2ImgPipeline:
        components.setdefault("requires_safety_checker", False)
    return cls(**components)
