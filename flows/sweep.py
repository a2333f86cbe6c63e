"""A sweep: every `[[variants]]` of a recipe baked and judged, then ranked in one report.

The preparation and captions are shared: the sweep's own run makes them (and the regularisation images and
trigger check) once; each variant is then its own run of the bake flow (`bake_lora(variant=...)`), where those
stages come back `Cached` and only bake and evaluate work.

- No `sweep.deployment`: the variants run one after another here, as subflows of the bake flow (which hands
  itself in: this module sits below flows/bake.py).
- With one: each variant is a flow run of that deployment on a work pool (run_deployment), all submitted at
  once, so as many bake in parallel as there are workers. The workers must reach the work dir (a shared
  folder). A run whose heartbeat stops for `sweep.lost_after_s` has lost its worker: it is marked Crashed and
  the variant is submitted again; the bake resumes from the state it saved after its last finished epoch.
  Variants left waiting while none runs for `sweep.no_worker_after_s` have no worker: they are cancelled.
A variant that fails does not stop the others; the report says what happened to each.
"""

from __future__ import annotations

import time
import uuid

from prefect import Flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from bakery.craft.sweep import COMPLETED, FAILED, LOST, Liveness, VariantOutcome, WorkerWait
from bakery.recipe import Recipe
from bakery.stages import Plan
from tasks.stage import RunInfo
from tasks.sweep import publish, read_beat, write_report

POLL_S = 1.0


def variant_plan(plan: Plan) -> dict[str, str | None]:
    """What the sweep's own plan asks of each variant's run: bake (and evaluate) again or from cache, evaluate or
    not. The stages before them are the sweep run's own."""
    again = next((s for s in ("bake", "evaluate") if plan.refreshes(s)), None)
    return {"from_stage": again, "to_stage": None if "evaluate" in plan.stages else "bake"}


def sweep(recipe: Recipe, recipe_path: str, run: RunInfo, plan: Plan, bake_flow: Flow) -> list[VariantOutcome]:
    """Bake and judge every variant (here or on the pool), then write the sweep report. Fails only when all do.

    `bake_flow`: the bake flow (flows/bake.py `bake_lora`), which bakes a variant here."""
    sweep_id = f"{run.run_id}-{uuid.uuid4().hex[:6]}"
    outcomes = [VariantOutcome(v.name, v.overrides) for v in recipe.variants]
    params = {"recipe_path": recipe_path, "sweep_id": sweep_id, **variant_plan(plan)}
    if recipe.sweep.deployment:
        on_pool(recipe, params, outcomes)
    else:
        for outcome in outcomes:
            one_here(bake_flow, params, outcome)
    path, summary = write_report(run.workdir, sweep_id, run.run_id, recipe.project.name, outcomes,
                                 recipe.evaluate.rank_tolerance)
    if recipe.sweep.publish_url:
        sent = publish(recipe.sweep.publish_url, recipe.project.name, sweep_id, path, outcomes)
        get_run_logger().info("sweep: %d files copied to %s", len(sent), recipe.sweep.publish_url)
    create_markdown_artifact(summary, key="sweep-summary", description="Sweep: what happened to each variant")
    get_run_logger().info("sweep: %s; report %s", ", ".join(f"{o.name} {o.status}" for o in outcomes), path)
    if not any(o.status == COMPLETED for o in outcomes):
        raise RuntimeError(f"every variant of the sweep failed: see {path}")
    return outcomes


def one_here(bake_flow: Flow, params: dict, outcome: VariantOutcome) -> None:
    """One variant as a subflow of this run (`params`: the bake flow's, but the variant)."""
    outcome.attempts = 1
    state = bake_flow.with_options(flow_run_name=f"variant-{outcome.name}")(
        **params, variant=outcome.name, return_state=True)
    if state.is_completed():
        outcome.status = COMPLETED
        outcome.history.append("attempt 1: completed here")
    else:
        outcome.status, outcome.message = FAILED, state.message or state.name
        outcome.history.append(f"attempt 1: failed: {outcome.message}")


class _Pool:
    """The variants' flow runs on the work pool: submitted, watched, submitted again when their worker is lost."""

    def __init__(self, recipe: Recipe, params: dict, outcomes: list[VariantOutcome]):
        self.recipe, self.params, self.sweep_id = recipe, params, params["sweep_id"]
        self.outcomes = {o.name: o for o in outcomes}
        self.current: dict[str, object] = {}  # variant -> its flow run id, while it has one in flight
        self.live: dict[str, Liveness] = {}
        self.waiting: set[str] = set()  # in flight but not running yet (scheduled or pending)
        self.wait = WorkerWait(recipe.sweep.no_worker_after_s)

    def submit(self, name: str) -> None:
        from prefect.deployments import run_deployment

        o = self.outcomes[name]
        o.attempts += 1
        flow_run = run_deployment(
            self.recipe.sweep.deployment, parameters={**self.params, "variant": name},
            timeout=0, idempotency_key=f"{self.sweep_id}-{name}-{o.attempts}", flow_run_name=f"{name}-{o.attempts}")
        self.current[name] = flow_run.id
        self.live[name] = Liveness(self.recipe.sweep.lost_after_s)
        self.waiting.add(name)
        get_run_logger().info("sweep: variant %s, attempt %d: flow run %s on %s", name, o.attempts, flow_run.id,
                              self.recipe.sweep.deployment)

    def again_or(self, name: str, status: str, line: str) -> None:
        o = self.outcomes[name]
        del self.current[name]
        if o.attempts < self.recipe.sweep.attempts:
            o.history.append(f"{line}: submitted again")
            self.submit(name)
        else:
            o.status, o.message = status, line
            o.history.append(f"{line}: no attempts left ({o.attempts})")

    def check(self, client, name: str) -> None:
        from prefect.states import Crashed

        o, flow_run_id = self.outcomes[name], self.current[name]
        state = client.read_flow_run(flow_run_id).state
        line = f"attempt {o.attempts} (flow run {flow_run_id})"
        self.waiting.discard(name)
        if state.is_completed():
            o.status = COMPLETED
            o.history.append(f"{line}: completed")
            del self.current[name]
        elif state.is_crashed():
            self.again_or(name, FAILED, f"{line}: crashed: {state.message}")
        elif state.is_final():  # failed or cancelled: the variant's own error, not its worker's
            o.status, o.message = FAILED, f"{state.name}: {state.message}"
            o.history.append(f"{line}: {o.message}")
            del self.current[name]
        elif not state.is_running():  # scheduled or pending: waiting for a worker
            self.live[name].restart(time.monotonic())
            self.waiting.add(name)
        elif self.live[name].lost(read_beat(self.recipe.workdir, self.sweep_id, name), time.monotonic()):
            why = f"worker lost: no heartbeat for {self.recipe.sweep.lost_after_s:g} s"
            client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
            get_run_logger().warning("sweep: variant %s, %s: %s", name, line, why)
            self.again_or(name, LOST, f"{line}: {why}")

    def give_up_waiting(self, client) -> None:
        """No worker for the waiting variants: cancel their flow runs (a worker started later must not take
        them) and say what to start. One a worker took meanwhile is left to run."""
        from prefect.states import Cancelled

        for name in sorted(self.waiting):
            o, flow_run_id = self.outcomes[name], self.current[name]
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state.is_running() or flow_run.state.is_final():
                continue  # the next check sees it
            del self.current[name]
            pool = flow_run.work_pool_name or "its work pool"
            why = (f"no worker took it in {self.recipe.sweep.no_worker_after_s:g} s while no variant ran: start one "
                   f"(prefect worker start --pool {pool}) and run again")
            client.set_flow_run_state(flow_run_id, Cancelled(message=why), force=True)
            o.status, o.message = FAILED, why
            o.history.append(f"attempt {o.attempts} (flow run {flow_run_id}): {why}")
            get_run_logger().warning("sweep: variant %s: %s", name, why)
        self.waiting.clear()


def on_pool(recipe: Recipe, params: dict, outcomes: list[VariantOutcome]) -> None:
    from prefect.client.orchestration import get_client

    pool = _Pool(recipe, params, outcomes)
    for o in outcomes:
        pool.submit(o.name)
    with get_client(sync_client=True) as client:
        while pool.current:
            for name in list(pool.current):
                pool.check(client, name)
            running = len(pool.current) - len(pool.waiting)
            if pool.wait.stuck(len(pool.waiting), running, time.monotonic()):
                pool.give_up_waiting(client)
            time.sleep(POLL_S)
