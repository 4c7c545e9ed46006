"""The request and response bodies of the `/sdapi/v1` API, with the field names, types and
defaults the established A1111-style API defines, so that its clients work unmodified.

As there, unknown fields are ignored (clients send many settings this studio has no use for)
and `null` means "the default". Fields that ask for something this studio cannot do (face
restoration, tiling, variation seeds, scripts) are refused with a 422 naming the field rather
than ignored, because ignoring them would return a different picture than the one asked for.
Ranges are checked where the studio's own settings are checked (params.GenerationParams), so
the API and the studio refuse the same values with the same sentences.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Body(BaseModel):
    # extra="ignore": the API's clients send settings of features this studio lacks; NaN and
    # infinities are refused here so no size or scale computed from them can fail later.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # Clients serialise unset options as null; treat them as not sent.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # Lax validation reads true as 1: steps=true would run a 1-step job. A number field
        # takes numbers only.
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value


def _numeric(annotation: Any) -> bool:
    """True for int, float and their optional forms."""
    if annotation in (int, float):
        return True
    args = [a for a in get_args(annotation) if a is not type(None)]
    return bool(args) and all(a in (int, float) for a in args)


class GenerationBody(_Body):
    """The fields txt2img and img2img share."""

    prompt: str = Field("", description="What the picture should show.")
    negative_prompt: str = Field("", description="What should not appear.")
    styles: list[str] = Field(default_factory=list,
                              description="Preset names (see /prompt-styles), applied in order.")
    seed: int = Field(-1, description="-1 picks a random seed; image k of a job uses seed + k.")
    subseed: int = Field(-1, description="Accepted for compatibility; variation seeds are not "
                         "available, so only subseed_strength 0 is.")
    subseed_strength: float = Field(0.0, description="Must be 0: variation seeds are not "
                                    "available here.")
    sampler_name: str | None = Field(None, description="Sampler (see /samplers), e.g. 'Euler a' "
                                     "or 'DPM++ 2M Karras'.")
    sampler_index: str = Field("Euler", description="Older name of sampler_name, used when "
                               "sampler_name is not sent.")
    scheduler: str | None = Field(None, description="Noise schedule (see /schedulers): "
                                  "'automatic' or 'karras'.")
    batch_size: int = Field(1, description="Images per batch (1-8).")
    n_iter: int = Field(1, description="Batches, one after another (1-100).")
    steps: int = Field(50, description="Sampling steps (1-150); img2img runs steps x "
                       "denoising_strength of them.")
    cfg_scale: float = Field(7.0, description="CFG scale (0-30): how strictly the prompt is "
                             "followed.")
    width: int = Field(512, description="Output width in pixels (64-4096, multiple of 8).")
    height: int = Field(512, description="Output height in pixels (64-4096, multiple of 8).")
    restore_faces: bool = Field(False, description="Must be false: face restoration is not "
                                "available here.")
    tiling: bool = Field(False, description="Must be false: tiling is not available here.")
    override_settings: dict[str, Any] = Field(
        default_factory=dict, description="Settings for this request only: "
        "sd_model_checkpoint (a title or name from /sd-models) and CLIP_stop_at_last_layers (1 "
        "only); other settings are ignored.")
    override_settings_restore_afterwards: bool = Field(
        True, description="false keeps the override's checkpoint as the API's checkpoint.")
    send_images: bool = Field(True, description="Return the pictures in the response.")
    save_images: bool = Field(False, description="Also save them to the studio's outputs "
                              "folder.")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict, description="Only 'controlnet' (ControlNet units in the "
        "ControlNet extension's request shape); any other script is refused.")
    script_name: str | None = Field(None, description="Must be empty: no scripts here.")
    infotext: str | None = Field(None, description="A picture's parameters text: fills every "
                                 "field this request does not send.")
    pag_scale: float = Field(0.0, description="This studio's perturbed-attention guidance "
                             "(0-10); 0, the default, samples as plain CFG.")
    draft: int = Field(0, description="This studio's draft mode (0-4, lossy, faster): steps "
                       "that reuse the UNet's deep features after each full one; 0 is off.")


class Txt2ImgBody(GenerationBody):
    """POST /sdapi/v1/txt2img."""

    denoising_strength: float = Field(0.7, description="Hires fix: strength of the second "
                                      "pass.")
    enable_hr: bool = Field(False, description="Hires fix: upscale the first picture by "
                            "hr_scale and repaint it with an img2img pass.")
    hr_scale: float = Field(2.0, description="Hires fix: upscale factor.")
    hr_upscaler: str | None = Field(None, description="Hires fix upscaler (see /upscalers; "
                                    "latent modes are upscaled as pictures here).")
    hr_second_pass_steps: int = Field(0, description="Hires fix: steps of the second pass "
                                      "(0: as steps).")
    hr_resize_x: int = Field(0, description="Hires fix: final width instead of hr_scale.")
    hr_resize_y: int = Field(0, description="Hires fix: final height instead of hr_scale.")
    hr_checkpoint_name: str | None = Field(None, description="Hires fix: checkpoint of the "
                                           "second pass (default: the first pass's).")
    hr_sampler_name: str | None = Field(None, description="Hires fix: sampler of the second "
                                        "pass (default: the first pass's).")
    hr_scheduler: str | None = Field(None, description="Hires fix: schedule of the second pass.")
    hr_prompt: str = Field("", description="Hires fix: prompt of the second pass (default: "
                           "prompt).")
    hr_negative_prompt: str = Field("", description="Hires fix: negative prompt of the second "
                                    "pass (default: negative_prompt).")


class Img2ImgBody(GenerationBody):
    """POST /sdapi/v1/img2img."""

    init_images: list[str] = Field(
        default_factory=list, description="The picture to transform: one base64 image or data: "
        "URL (http(s) URLs are not fetched).")
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and "
                             "fill, 3 just resize (latent upscale: done as 0).")
    denoising_strength: float = Field(0.75, description="0 returns the original, 0.1-0.4 "
                                      "subtle, 0.4-0.7 medium, 0.7-1 overhaul.")
    mask: str | None = Field(None, description="Inpaint mask (base64 or data: URL), white = "
                             "repaint.")
    mask_blur: int | None = Field(None, description="Mask edge blur in pixels (0-64); "
                                  "default: mask_blur_x.")
    mask_blur_x: int = Field(4, description="Mask blur (one radius is used for both axes).")
    mask_blur_y: int = Field(4, description="Mask blur (one radius is used for both axes).")
    inpainting_fill: int = Field(0, description="What the masked area starts from: 0 fill, 1 "
                                 "original, 2 latent noise, 3 latent nothing.")
    inpaint_full_res: bool = Field(True, description="Repaint only the masked area (plus "
                                   "padding) at full size.")
    inpaint_full_res_padding: int = Field(0, description="Context pixels around the mask "
                                          "(0-256).")
    inpainting_mask_invert: int = Field(0, description="1 repaints the black part of the mask "
                                        "instead.")
    include_init_images: bool = Field(False, description="Echo init_images and mask in the "
                                      "response's parameters.")
    image_cfg_scale: float | None = Field(None, description="Ignored (instruct-pix2pix only).")


class ImageResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs (no data: prefix), each with its "
                              "settings in the PNG's parameters chunk.")
    parameters: dict[str, Any] = Field(description="The request as read.")
    info: str = Field(description="A JSON string: prompt, seeds, size, sampler, infotexts, ...")


class OptionsBody(BaseModel):
    model_config = ConfigDict(extra="allow")


class PngInfoBody(_Body):
    image: str = Field(..., description="A PNG (base64 or data: URL).")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]
