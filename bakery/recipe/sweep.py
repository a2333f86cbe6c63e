"""The recipe's sweep sections: [[variants]] of [train], and [sweep] (how they are baked)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bakery.recipe.bake import TrainParams
from bakery.recipe.base import NAME_PATTERN, _as_train_keys, _Section


class Variant(BaseModel):
    """A variant of [train] for a sweep: its name, then the [train] keys it changes (network_dim = 16, optimizer = "adamw", ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    # Names its LoRA files (`<output name>-<name>`) and its line in the sweep report.
    name: Annotated[str, Field(pattern=NAME_PATTERN)]

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _train_keys(self) -> "Variant":
        if "family" in self.overrides:  # its defaults reach beyond [train] (buckets, captions, evaluate)
            raise ValueError("train.family cannot vary between variants: it sets other sections too; sweep "
                             "one family per recipe")
        try:
            TrainParams.model_validate(self.overrides)
        except ValidationError as exc:  # each bad key named as it stands under [train]
            raise ValueError(_as_train_keys(exc)) from None
        return self


class SweepParams(_Section):
    """How the [[variants]] are baked: one after another here, or each as its own flow run on a work pool."""

    # A deployment of the bake flow on a work pool (e.g. "bake-lora/sweep-variant", deployments/prefect.yaml):
    # each variant becomes a flow run of it on a worker, which must reach the work dir (a shared folder).
    # None: the variants are baked one after another in this run.
    deployment: str | None = None
    heartbeat_s: Annotated[float, Field(gt=0)] = 5.0  # a variant's flow run writes its heartbeat file this often
    # No heartbeat for this long: its worker is lost; the variant runs again and resumes from its saved state.
    lost_after_s: Annotated[float, Field(gt=0)] = 120.0
    attempts: Annotated[int, Field(gt=0, le=10)] = 3  # flow runs one variant may take
    # Variants wait for a worker while none of the sweep's runs: this long, and the pool has no worker for them
    # (none started, or all gone): they are cancelled and reported. Long enough for a cloud GPU node to start;
    # 0: wait as long as it takes.
    no_worker_after_s: Annotated[float, Field(ge=0)] = 1800.0
    # Where the results are also copied, through fsspec ("s3://bucket/loras" with s3fs installed,
    # "file:///mnt/nas/loras"): each variant's LoRA files and report and the sweep report, under
    # <url>/<project name>/<sweep id>/. The work dir itself stays a folder. None: nowhere else.
    publish_url: str | None = None
