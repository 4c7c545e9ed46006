"""What one job may ask of a studio, so that one user cannot hold the GPU for many minutes
while the others wait: the output size, the steps, the images per job, the jobs one user may
have waiting, and a time budget per job. Each is a launch flag with a default fit for a shared
studio; a job over one is refused when it is submitted (Engine.check_request, so the studio,
the REST API, the CLI and a cluster all refuse it the same way) with the limit and its flag
named. No torch here: front doors read these too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..params import GenerationParams, field_range


@dataclass(frozen=True)
class Limits:
    """max_pixels: output width x height (an inherited size, from a larger init image, is
    scaled down to it instead); max_steps: sampling steps as set (the job runs steps x
    strength of them); max_batch: images in one job (batch size x batch count);
    max_queued_per_user: jobs one logged-in user may have waiting or running at once (0: no
    limit; jobs without a login are bounded by the queue size alone); job_timeout: seconds a
    job may run before it is stopped like an Interrupt (0: no limit)."""

    max_pixels: int = 2048 * 2048
    max_steps: int = 150
    max_batch: int = 32
    max_queued_per_user: int = 4
    job_timeout: float = 600.0

    def __post_init__(self):
        for name in ("max_pixels", "max_steps", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_queued_per_user < 0 or not self.job_timeout >= 0:
            raise ValueError("max_queued_per_user and job_timeout must be 0 or more")

    @classmethod
    def unlimited(cls) -> "Limits":
        """As much as the settings themselves allow, no queue share and no time budget: for a
        command line run by the machine's own user, who is not sharing the GPU."""
        from ..images import DEFAULT_MAX_PIXELS

        return cls(max_pixels=DEFAULT_MAX_PIXELS, max_steps=field_range("steps")[1],
                   max_batch=field_range("batch_count")[1] * field_range("batch_size")[1],
                   max_queued_per_user=0, job_timeout=0)

    def check(self, params: GenerationParams) -> None:
        """InputError naming the field and the limit when `params` asks for more."""
        if params.steps > self.max_steps:
            raise InputError("steps", f"steps: {params.steps} is more than this studio allows "
                             f"(at most {self.max_steps}, --max-steps)")
        if params.images_per_job > self.max_batch:
            raise InputError("batch_count", f"batch count x batch size: {params.batch_count} x "
                             f"{params.batch_size} = {params.images_per_job} images is more than "
                             f"this studio allows in one job (at most {self.max_batch}, "
                             "--max-batch)")
        if params.width and params.height and params.width * params.height > self.max_pixels:
            raise InputError("width", f"width x height: {params.width}x{params.height} is more "
                             f"than this studio allows ({self.max_pixels:,} pixels, "
                             "--max-pixels)")
        for field in ("width", "height"):
            side = getattr(params, field)
            # One side alone: the other follows the init image, at least 64 px.
            if side and side * 64 > self.max_pixels:
                raise InputError(field, f"{field}: {side} px is more than this studio allows "
                                 f"({self.max_pixels:,} pixels in all, --max-pixels)")

    def user_refusal(self, owner: str | None, jobs) -> str | None:
        """The busy message for a job of `owner` when their jobs waiting or running (`jobs`:
        every job the engine holds, each with an `owner`) are at max_queued_per_user; None
        when the job may queue."""
        if not owner or not self.max_queued_per_user:
            return None
        count = sum(1 for job in jobs if job.owner == owner)
        if count < self.max_queued_per_user:
            return None
        return (f"you already have {count} jobs waiting or running, the most one user may "
                f"have at once here (--max-queued-per-user {self.max_queued_per_user}); "
                "wait for one to finish")

    def timeout_notice(self) -> str:
        return (f"stopped after {self.job_timeout:g} s, this studio's time limit for one job "
                "(--job-timeout); the images finished by then are kept")
