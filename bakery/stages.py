"""The stage order of a bake, and which stages a run executes (`--from`, `--only`)."""

from __future__ import annotations

from dataclasses import dataclass

# The whole chain, in the guide's order; the flow runs the ones built so far.
ALL_STAGES = (
    "scrape", "ingest", "convert", "dedupe", "alpha", "trim", "upscale", "crops", "masks",
    "buckets", "autotag", "prune", "regularisation", "trigger_check", "slide", "bake", "evaluate",
)


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    stages: tuple[str, ...]  # run in this order (upstream ones come from cache if unchanged)
    refresh: frozenset[str]  # re-executed even if a cached result exists

    def refreshes(self, stage: str) -> bool:
        return stage in self.refresh


def plan_run(
    built: tuple[str, ...], from_stage: str | None = None, only_stage: str | None = None, to_stage: str | None = None
) -> Plan:
    """`--from S`: re-execute S and every stage after it. `--only S`: re-execute S, stop after it.
    `--to S`: run the chain up to S (cached where unchanged) and stop, e.g. to review dedupe first."""
    if from_stage and only_stage:
        raise PlanError("give --from or --only, not both")
    if to_stage and only_stage:
        raise PlanError("give --to or --only, not both")
    for name in (from_stage, only_stage, to_stage):
        if name is None or name in built:
            continue
        if name in ALL_STAGES:
            raise PlanError(f"stage '{name}' is not built yet; built stages: {', '.join(built)}")
        raise PlanError(f"unknown stage '{name}'; built stages: {', '.join(built)}")
    if to_stage:
        stop = built.index(to_stage) + 1
        if from_stage and built.index(from_stage) >= stop:
            raise PlanError(f"--from {from_stage} comes after --to {to_stage}")
        built = built[:stop]
    if from_stage:
        return Plan(built, frozenset(built[built.index(from_stage):]))
    if only_stage:
        return Plan(built[: built.index(only_stage) + 1], frozenset({only_stage}))
    return Plan(built, frozenset())
