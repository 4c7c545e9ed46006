"""Sampler names: the ones artists know, the diffusers class names, and how to build each.

Pure data at import time (the UI and the params validation read the names without torch);
`build()` imports diffusers only when a job actually needs a scheduler.
"""

from __future__ import annotations

KARRAS = {"use_karras_sigmas": True}
EXPONENTIAL = {"use_exponential_sigmas": True}
# The noise schedules a sampler name may end with (A1111's "Schedule type"), and the config
# flag of each; a name without one uses the model's own schedule ("Automatic").
SCHEDULE_FLAGS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas"}

# Artist name -> (diffusers class, config overrides). Order is the dropdown's order: the guide's
# two safe choices first.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", KARRAS),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", **KARRAS}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", KARRAS),
    "DPM++ 2S": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ 2S Karras": ("DPMSolverSinglestepScheduler", KARRAS),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler Karras": ("EulerDiscreteScheduler", KARRAS),
    "Heun": ("HeunDiscreteScheduler", {}),
    "Heun Karras": ("HeunDiscreteScheduler", KARRAS),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", KARRAS),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", KARRAS),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", KARRAS),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
}
# The exponential schedule for every sampler that has a Karras one, after the others in the
# dropdown (rarer choices).
for _name, (_cls, _extra) in list(SCHEDULERS.items()):
    if _name.endswith(" Karras"):
        _plain = {k: v for k, v in _extra.items() if k != "use_karras_sigmas"}
        SCHEDULERS[_name[: -len(" Karras")] + " Exponential"] = (_cls, {**_plain, **EXPONENTIAL})

# The 14 diffusers classes, each under the artist name with no overrides.
CLASS_NAMES: dict[str, str] = {}
for _name, (_cls, _extra) in SCHEDULERS.items():
    if not _extra:
        CLASS_NAMES.setdefault(_cls, _name)
CLASS_NAMES["PNDMScheduler"] = "PLMS"

# Classes whose sigmas can follow another schedule; everything else ignores the flags.
_SCHEDULE_CAPABLE = {cls for cls, extra in SCHEDULERS.values() if extra.get("use_karras_sigmas")}
# Second-order samplers evaluate the UNet about twice per step.
SECOND_ORDER = {"HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                "DPMSolverSDEScheduler"}


def all_names() -> list[str]:
    """Every accepted name: artist names first, then the diffusers class names."""
    return list(SCHEDULERS) + list(CLASS_NAMES)


def canonical(name: str) -> str:
    """The artist name for an artist or class name (case-insensitive); ValueError if unknown."""
    if name in SCHEDULERS:
        return name
    if name in CLASS_NAMES:
        return CLASS_NAMES[name]
    folded = name.strip().casefold()
    for known in all_names():
        if known.casefold() == folded:
            return canonical(known)
    raise ValueError(f"unknown scheduler {name!r}")


def split_schedule(name: str) -> tuple[str, str]:
    """('DPM++ 2M', 'Karras') for 'DPM++ 2M Karras': how infotext writes Sampler / Schedule type."""
    name = canonical(name)
    for schedule in SCHEDULE_FLAGS:
        if name.endswith(f" {schedule}"):
            return name[: -len(schedule) - 1], schedule
    return name, "Automatic"


def join_schedule(sampler: str, schedule_type: str | None) -> str:
    """The inverse of split_schedule; 'Automatic' or no schedule type keeps the sampler as is
    (ValueError when the sampler has no such schedule)."""
    sampler = sampler.strip()
    wanted = (schedule_type or "").strip().casefold()
    for schedule in SCHEDULE_FLAGS:
        if wanted == schedule.casefold() and not sampler.endswith(schedule):
            return canonical(f"{sampler} {schedule}")
    return canonical(sampler)


def build(name: str, base_config, seed: int | None = None):
    """A scheduler instance for `name`, from the loaded model's scheduler config.

    `seed` feeds DPMSolverSDE's Brownian noise, which does not draw from the torch generator and
    would otherwise differ between runs with the same seed.
    """
    import diffusers

    cls_name, extra = SCHEDULERS[canonical(name)]
    cls = getattr(diffusers, cls_name)
    overrides = dict(extra)
    if cls_name in _SCHEDULE_CAPABLE:
        # A checkpoint's own config may carry Karras (or other) sigmas; the artist name decides.
        for flag in SCHEDULE_FLAGS.values():
            overrides.setdefault(flag, False)
    if cls_name == "DPMSolverSDEScheduler" and seed is not None:
        overrides["noise_sampler_seed"] = seed
    config = dict(base_config)
    for key in (*SCHEDULE_FLAGS.values(), "use_beta_sigmas", "algorithm_type",
                "noise_sampler_seed"):
        config.pop(key, None)
    return cls.from_config(config, **overrides)
