"""`bakery`: the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from bakery.recipe import Recipe, RecipeError, load_recipe, starter_recipe_text
from bakery.report import (
    composition_lines,
    framing_lines,
    short_error,
    skip_summary,
    stage_notes,
    text_table,
    upscale_line,
    warning_counts,
    warning_lines,
)
from bakery.stages import PlanError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LoRA Bakery: bake Stable Diffusion LoRAs from a recipe.")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"bakery: {message}", err=True)
    raise typer.Exit(code)


MAX_PROBLEMS = 20  # recipe problems listed, one line each


def _bad_recipe(path: Path | str, problems: list[str]) -> NoReturn:
    lines = [short_error(p) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    fail(f"bad recipe {path}:\n  " + "\n  ".join(lines), code=2)


def _load(recipe_path: Path) -> Recipe:
    try:
        recipe = load_recipe(recipe_path)
    except RecipeError as exc:
        _bad_recipe(exc.path, exc.problems)
    missing = [
        f"sources[{i}].path: folder does not exist: {recipe.resolve(s.path)}"
        for i, s in enumerate(recipe.sources)
        if s.kind == "folder" and not recipe.resolve(s.path).is_dir()
    ]
    if missing:
        _bad_recipe(recipe_path, missing)
    return recipe


def _quiet_prefect_defaults() -> None:
    # Prefect's analytics try DNS lookups; nothing here reaches the internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _run_log(recipe: Recipe, run_id: str) -> str | None:
    from tasks.runlog import run_log_path

    path = run_log_path(recipe.workdir, run_id)
    return str(path) if path.is_file() else None


WARNINGS_SHOWN = 3  # per stage, by `bakery status` and after a run (`--warnings`: all)


def _print_run(recipe: Recipe, run_id: str | None = None, all_warnings: bool = False,
               recipe_path: Path | None = None) -> None:
    from storage import Catalog

    with Catalog.open(recipe.workdir, read_only=True) as cat:
        record = cat.rows("SELECT * FROM runs WHERE run_id = ?", [run_id]) if run_id else [cat.last_run()]
        if not record or record[0] is None:
            fail(f"no runs recorded in {cat.path}")
        run = record[0]
        typer.echo(f"run {run['run_id']} ({run['status']}, started {run['started_at']:%Y-%m-%d %H:%M:%S})")
        if run["message"]:
            typer.echo(f"why: {short_error(run['message'])}")
        log = _run_log(recipe, run["run_id"])
        stages = cat.stage_table(run["run_id"])
        typer.echo(text_table(stages))
        for note in stage_notes(stages):
            typer.echo(note)
        skips = cat.skips_for(run["run_id"])
        warnings = cat.stage_warnings(run["run_id"])
        variants = cat.sweep_variants(run["run_id"])
        tasted = any(s["stage"] == "evaluate" and s["status"] in ("ran", "cached") for s in stages)
        evaluation = cat.rows("SELECT * FROM evaluations ORDER BY created_at DESC LIMIT 1") if tasted else []
        files = [r["file"] for r in cat.rows(
            "SELECT file FROM evaluation_epochs WHERE eval_key = ? ORDER BY epoch", [evaluation[0]["eval_key"]]
        )] if evaluation else []
    if upscaled := upscale_line(recipe.workdir, stages):
        typer.echo(upscaled)
    for line in framing_lines(recipe.workdir, stages) + composition_lines(recipe.workdir, stages):
        typer.echo(line)
    if skips:
        typer.echo(f"\nskipped ({len(skips)}):")
        for line in skip_summary(skips, log=log):
            typer.echo(f"  {line}")
    if warnings:  # the first few of each stage; every one with --warnings, in the studio and the catalog
        typer.echo(f"\nwarnings ({len(warnings)}): {warning_counts(warnings)}")
        for line in warning_lines(warnings, None if all_warnings else WARNINGS_SHOWN,
                                  more=f"all: bakery status {recipe_path or 'RECIPE'} --warnings"):
            typer.echo(f"  {line}")
    if variants:
        typer.echo(f"\nsweep ({len(variants)} variants):")
        for v in variants:
            typer.echo(f"  {v['variant']}: {v['status']} ({v['attempts']} flow run(s)); "
                       f"{v['report_path'] or short_error(v['message'] or '')}")
        for report in sorted((recipe.workdir / "sweeps").glob(f"{run['run_id']}-*/report.html")):
            typer.echo(f"sweep report: {report}")
    if evaluation:
        ev = evaluation[0]
        typer.echo(f"\nLoRA files (kohya format, one per {'save' if recipe.slider else 'epoch'}):")
        for f in files:
            typer.echo(f"  {f}")
        if ev["recommended_epoch"] is not None:
            at = (f"step {ev['recommended_epoch']} at strength {ev['weight_min']:g} to {ev['weight_max']:g}"
                  if recipe.slider else  # a slider saves every n steps
                  f"epoch {ev['recommended_epoch']} at weight {ev['weight_min']:g}-{ev['weight_max']:g}")
            typer.echo(f"recommended: {at} ({ev['recommended_file']})")
        else:
            typer.echo("recommended: none (see the report's flags)")
        typer.echo(f"report: {ev['report_path']}")


def execute(
    recipe_path: Path, from_stage: str | None = None, only_stage: str | None = None, to_stage: str | None = None,
    go_on: bool = True,
) -> str:
    """Run a recipe through the flow (shared by `run` and `demo`); returns the run id.

    The recipe is parsed here, once: the flow (which takes its path, as a deployment's run does) is handed the
    parsed one (flows/recipes.py)."""
    from bakery.stages import plan_run
    from flows.bake import BUILT, bake_lora, replay_cached
    from flows.recipes import recipe_given
    from flows.runtime import configured_api, prefect_api
    from tasks.runlog import short_console

    recipe = _load(recipe_path)
    try:
        plan = plan_run(BUILT, from_stage, only_stage, to_stage)
    except PlanError as exc:
        fail(str(exc), code=2)
    if not go_on:
        from bakery.doctor import preflight

        # The machine cannot take this run: say so before an hour is spent.
        for problem in preflight(recipe, bake="bake" in plan.stages):
            fail(f"{problem} (bakery doctor {recipe_path}; --go-on runs anyway)")
    _quiet_prefect_defaults()
    path = str(recipe_path.resolve())
    with recipe_given(path, recipe):
        # Every stage cached and no server configured: no temporary server to start (it is most of the time).
        if not configured_api() and (run_id := replay_cached(path, from_stage, only_stage, to_stage)):
            typer.echo("every stage cached: recorded in the catalog without a Prefect run (no server configured)")
            _print_run(recipe, run_id, recipe_path=recipe_path)
            return run_id
        with prefect_api(recipe.workdir / "logs"), short_console():
            try:
                run_id = bake_lora(path, from_stage, only_stage, to_stage)
            except Exception as exc:  # one line here; the run's log file holds the details
                from bakery.doctor import disk_full_line

                full = disk_full_line(recipe, str(exc), recipe_path)
                fail(f"run failed: {full or _failure(recipe, recipe_path, exc)}")
    _print_run(recipe, run_id, recipe_path=recipe_path)
    return run_id


def _failure(recipe: Recipe, recipe_path: Path, exc: Exception) -> str:
    """The exception as one line, naming the log file of the run that raised it (the recipe's last run)."""
    from storage import Catalog

    line, log = short_error(str(exc) or type(exc).__name__), None
    if (recipe.workdir / "catalog.duckdb").is_file():
        with Catalog.open(recipe.workdir, read_only=True) as cat:
            run = cat.last_run(str(recipe_path.resolve()))
        log = _run_log(recipe, run["run_id"]) if run and run["status"] == "failed" else None
    return f"{line} (details in {log})" if log and log not in line else line


@app.command()
def init(directory: Path = typer.Argument(..., help="Folder for the new recipe (created if needed).")) -> None:
    """Write a commented starter recipe (DIR/recipe.toml) and an empty images folder."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "recipe.toml"
    if target.exists():
        fail(f"{target} already exists; not overwriting it")
    target.write_text(starter_recipe_text(), encoding="utf-8")
    (directory / "images").mkdir(exist_ok=True)
    typer.echo(f"wrote {target}; put your images in {directory / 'images'} and run: bakery run {target}")


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and every later one."),
    only: Optional[str] = typer.Option(None, "--only", help="Re-run only this stage (earlier ones from cache)."),
    to: Optional[str] = typer.Option(None, "--to", help="Stop after this stage (e.g. review dedupe before the rest)."),
    go_on: bool = typer.Option(False, "--go-on", help="Run even when the bake will not fit the GPU or the disk."),
) -> None:
    """Run a recipe; unchanged stages come from cache. First checks that the disk and the GPU can take it."""
    execute(recipe, from_stage, only, to, go_on=go_on)


@app.command()
def doctor(recipe: Path = typer.Argument(..., help="Recipe TOML file.")) -> None:
    """The machine against the recipe: torch, CUDA, the GPU and its free VRAM, bf16, the disk, every model key,
    and the bake's estimated peak VRAM with the setting that fits (docs/doctor.md). Exit 1 when something is short."""
    from bakery.doctor import report

    lines = report(_load_quiet(recipe))
    for line in lines:
        typer.echo(line)
    if any(line.startswith("SHORT") or ": MISSING:" in line for line in lines):
        raise typer.Exit(1)


@app.command()
def status(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    warnings: bool = typer.Option(False, "--warnings", help="List every warning of the run, not the first few."),
) -> None:
    """The last run: each stage ran/cached/failed, its picture account (in + split = out + skipped), time; skips,
    warnings (their count per stage and the first few of each)."""
    cfg = _load(recipe)
    if not (cfg.workdir / "catalog.duckdb").exists():
        fail(f"no runs yet: {cfg.workdir} has no catalog (run: bakery run {recipe})")
    _print_run(cfg, all_warnings=warnings, recipe_path=recipe)


@app.command()
def provenance(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    image: str = typer.Argument(..., help="Image sha256 (or a 6+ digit prefix, an md5, or a file path)."),
) -> None:
    """The chain from an image back to where it came from."""
    from storage import Catalog, digest_file

    cfg = _load(recipe)
    ref = digest_file(Path(image)).sha256 if Path(image).is_file() else image
    with Catalog.open(cfg.workdir, read_only=True) as cat:
        try:
            chain = cat.provenance(cat.resolve_hash(ref))
        except LookupError as exc:
            fail(str(exc))
    for src in chain.sources:
        typer.echo(f"source  {src['kind']}: {src['location']} (fetched {src['fetched_at']:%Y-%m-%d %H:%M:%S})")
    typer.echo(f"original {chain.origin_hash}")
    for step in chain.steps:
        typer.echo(f"  -> {step.stage:<9} {step.output_hash}  params={step.params}  code={step.code_version}")
        if "generated_by" in step.params:  # drawn from its input's caption, not made of its pixels
            p = step.params
            typer.echo(f"     generated by {p['generated_by'].get('base_model')} from caption {p['caption']!r} "
                       f"with seed {p['seed']} ({p['width']}x{p['height']}, {p['sampler']}, {p['steps']} steps)")
    _print_image_edits(cfg, [chain.origin_hash, *(s.output_hash for s in chain.steps)])
    hashes, names = {chain.origin_hash, *(s.output_hash for s in chain.steps)}, {s["name"] for s in chain.sources}
    with Catalog.open(cfg.workdir, read_only=True) as cat:  # its caption: screening and special tags (§3, §10)
        for d in cat.caption_decisions():
            if d["image_hash"] in hashes or d["name"] in names:
                typer.echo(f"  caption {d['rule']} {d['action']}: {d['reason']}")


def _print_image_edits(cfg: Recipe, hashes: list[str]) -> None:
    """The review studio's edits naming the picture (`bakery edits`), undone ones marked."""
    from bakery.edits import describe, image_edits
    from storage import Catalog

    with Catalog.open(cfg.workdir, read_only=True) as cat:
        if "edits" not in {r["table_name"] for r in cat.rows("SELECT table_name FROM information_schema.tables")}:
            return
        for e in image_edits(cat, hashes):
            typer.echo(f"  {describe(e)}")


@app.command("edits")
def edits_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    action: str = typer.Argument("list", help="list | undo ID | export [FILE] | import [FILE]"),
    arg: Optional[str] = typer.Argument(None, help="The edit id (undo) or the file (default <recipe stem>.edits.toml)."),
    all_: bool = typer.Option(False, "--all", help="list: undone edits too."),
) -> None:
    """The review studio's edits: list them, undo one, export them next to the recipe or import them."""
    from bakery import edits as api

    cfg = _load(recipe)
    file = Path(arg) if arg else api.edits_file(recipe)
    try:
        if action == "list":
            for e in api.list_edits(cfg.workdir, include_undone=all_):
                typer.echo(api.describe(e))
        elif action == "undo" and arg and arg.isdigit():
            typer.echo(f"undone: {api.describe(api.undo_edit(cfg.workdir, int(arg)))}")
        elif action == "export":
            typer.echo(f"exported {api.export_edits(cfg.workdir, file)} edit(s) to {file}")
        elif action == "import":
            typer.echo(f"imported {api.import_edits(cfg.workdir, file)} edit(s) or undo(s) from {file}")
        else:
            fail(f"edits: unknown action {action!r} {arg or ''}: give list, undo ID, export [FILE] or import [FILE]", 2)
    except api.EditError as exc:
        fail(str(exc))


@app.command("edit")
def edit_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    kind: str = typer.Argument(..., help="exclude | include | add_tags | remove_tags | replace_tag | move | "
                                         "keep_duplicate | crop | keep"),
    target: str = typer.Argument(..., help="A picture (name, kohya file name or hash); a folder for replace_tag."),
    values: Optional[list[str]] = typer.Argument(None, help="TAG... | OLD [NEW] | FOLDER | X0 Y0 X1 Y1"),
    reason: str = typer.Option("", "--reason", help="Why (shown in skips and provenance)."),
) -> None:
    """Add one edit; the next `bakery run` applies it (and re-runs only the stages it concerns)."""
    from bakery import edits as api
    from bakery.craft.edits import payload_from_args

    cfg = _load(recipe)
    try:
        done = api.add_edit(cfg.workdir, kind, target, payload_from_args(kind, values or []), reason)
    except api.EditError as exc:
        fail(str(exc))
    typer.echo(f"added: {api.describe(done)}")


@app.command()
def demo(workdir: Path = typer.Option(Path("demo-work"), "--workdir", help="Where the demo lives."),
         judges: bool = typer.Option(False, "--judges", help="Turn on the character and quality judges ([judges]: "
                                     "CCIP, corruption, classifiers) on tiny deepghs-format models.")) -> None:
    """Generate the example dataset and run it through every stage built so far."""
    from bakery.demo import write_demo

    recipe = write_demo(workdir, judges)
    execute(recipe)
    typer.echo(f"\ndemo recipe: {recipe}\nwork dir:    {load_recipe(recipe).workdir}")


@app.command()
def serve(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    cron: Optional[str] = typer.Option("0 3 * * *", help="Schedule (cron); '' for none."),
    on_new_images: bool = typer.Option(True, help="Also run when `bakery watch` reports new images."),
) -> None:
    """Serve the recipe's deployment (on demand, scheduled, event-triggered) until stopped.

    Needs a Prefect server: set PREFECT_API_URL (e.g. after `prefect server start`).
    """
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    _load(recipe)
    _quiet_prefect_defaults()
    if not PREFECT_API_URL.value():
        fail("serving needs a Prefect server: run `prefect server start` and set PREFECT_API_URL "
             "(e.g. http://127.0.0.1:4200/api)", code=2)
    from flows.deploy import recipe_deployments

    deployments = recipe_deployments(recipe, cron=cron or None, on_new_images=on_new_images)
    typer.echo(f"serving {', '.join('bake-lora/' + d.name for d in deployments)}; Ctrl-C to stop")
    prefect_serve(*deployments, print_starting_message=False)


@app.command()
def watch(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    interval: float = typer.Option(60.0, help="Seconds between looks at the source folders."),
    polls: int = typer.Option(0, help="Stop after this many polls (0: run until stopped)."),
) -> None:
    """Emit a `bakery.images.added` event when the recipe's source folders change.

    A deployment served by `bakery serve` runs the recipe on that event.
    """
    import time

    from prefect.events import emit_event

    from bakery.watch import folders_fingerprint
    from flows.deploy import IMAGES_ADDED_EVENT, recipe_resource_id
    from flows.runtime import drain_client_workers

    cfg = _load(recipe)
    _quiet_prefect_defaults()
    folders = [(cfg.resolve(s.path), s.recursive) for s in cfg.sources if s.kind == "folder"]
    last, count = folders_fingerprint(folders)
    typer.echo(f"watching {count} files in {len(folders)} folder(s) every {interval:g} s")
    n = 0
    while polls <= 0 or n < polls:
        time.sleep(interval)
        n += 1
        current, count = folders_fingerprint(folders)
        if current != last:
            last = current
            emit_event(
                event=IMAGES_ADDED_EVENT,
                resource={"prefect.resource.id": recipe_resource_id(recipe), "bakery.recipe": str(recipe.resolve())},
                payload={"files": count},
            )
            drain_client_workers()  # the event leaves now, not at exit
            typer.echo(f"source folders changed ({count} files): event {IMAGES_ADDED_EVENT} sent")


@app.command("recipe-doc")
def recipe_doc(
    write: Path = typer.Option(None, "--write", help="Write the page to this file (docs/recipe.md)."),
) -> None:
    """Print the recipe reference page generated from the recipe model (or write it to docs/recipe.md)."""
    from bakery.recipe_doc import reference_page, write_page

    if write is None:
        typer.echo(reference_page(), nl=False)
    else:
        typer.echo(f"{write}: {'updated' if write_page(write) else 'already up to date'}")


@app.command()
def tags(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    group: Optional[str] = typer.Option(None, help="Only this group (concept/outfit folder)."),
    top: int = typer.Option(25, help="Tags shown per group."),
) -> None:
    """Tag frequency per group before/after pruning, the change since the previous run, and the overlap."""
    from bakery.craft.caption import tagstats
    from storage import Catalog

    cfg = _load(recipe)
    if not (cfg.workdir / "catalog.duckdb").exists():
        fail(f"no runs yet: {cfg.workdir} has no catalog (run: bakery run {recipe})")
    with Catalog.open(cfg.workdir, read_only=True) as cat:
        runs = cat.runs_with("tag_stats")
        if not runs:
            fail("no tag statistics yet: the recipe needs [[concepts]] and a run through the prune stage")
        current = cat.tag_stats(runs[0])
        previous = cat.tag_stats(runs[1]) if len(runs) > 1 else None
    typer.echo(f"tags of run {runs[0]} (count before -> after pruning)")
    typer.echo(tagstats.format_table(tagstats.frequency(current, group, top)))
    if previous is None:
        typer.echo("\nno previous run to compare with")
    else:
        changes = [d for d in tagstats.diff(previous, current) if not group or d.group == group]
        typer.echo(f"\nchanges since run {runs[1]}:" + ("" if changes else " none"))
        for d in changes:
            typer.echo(f"  {d.group}: gained {', '.join(f'{t} ({n})' for t, n in d.gained.items()) or '-'}; "
                       f"lost {', '.join(f'{t} ({n})' for t, n in d.lost.items()) or '-'}"
                       + (f"; changed {', '.join(f'{t} {a}->{b}' for t, (a, b) in d.changed.items())}" if d.changed else ""))
    typer.echo("\noverlap (what each trigger absorbs: pruned in its group, kept elsewhere):")
    for o in tagstats.overlap(current):
        if not group or group in o.pruned_in + o.kept_in:
            typer.echo(f"  {o.tag}: pruned in {', '.join(o.pruned_in)}"
                       + (f"; kept in {', '.join(o.kept_in)}" if o.kept_in else "; kept nowhere"))


@app.command()
def review(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    port: int = typer.Option(8765, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (other machines reach it only if you say so)."),
) -> None:
    """The review studio: the dataset as it will be trained, the decisions, the runs; edits in one place."""
    import uvicorn

    from bakery.review import create_app

    cfg = _load(recipe)
    if not (cfg.workdir / "catalog.duckdb").exists():
        fail(f"no runs yet: {cfg.workdir} has no catalog (run: bakery run {recipe})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host}: anyone who reaches it can see the dataset and edit it", err=True)
    typer.echo(f"review studio for {recipe}: http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(create_app(recipe), host=host, port=port, log_level="warning")


@app.command("export-kohya")
def export_kohya(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    out: Path = typer.Argument(..., help="Folder to write img/, reg/ and the two TOML files into."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export in OUT."),
) -> None:
    """Write the last training set as kohya sd-scripts expects it (train with sd-scripts instead)."""
    from bakery.kohya_export import ExportError
    from bakery.kohya_export import export_kohya as do_export

    cfg = _load(recipe)
    try:
        done = do_export(cfg, out, force)
    except ExportError as exc:
        fail(str(exc))
    reg = f" (+ {done.reg_images} regularisation images)" if done.reg_images else ""
    typer.echo(f"exported {done.images} training pictures{reg} of run {done.run_id} into {out}: {', '.join(done.folders)}")
    if done.account:
        typer.echo(f"picture account: {done.account}")
    if done.left_out:
        typer.echo(f"left out ({len(done.left_out)}, every one in {done.files['left_out']}):")
        for e in done.left_out:
            typer.echo(f"  {e.stage}: {e.picture}: {e.reason}")
    for line in done.not_as_recipe:
        typer.echo(f"not as the recipe says: {line}")
    for kind, path in done.files.items():
        typer.echo(f"  {kind}: {path}")


@app.command("diffusers-form")
def diffusers_form(lora: Path = typer.Argument(..., help="A LoRA file the bake wrote.")) -> None:
    """Write a LoRA file in the names diffusers and ComfyUI read, beside it, for a base whose diffusers loader does
    not read kohya's names (Anima); the kohya file stays as it is."""
    from bakery.craft.bake.bases.load import family_for
    from bakery.craft.bake.networks.kohya_lora import architecture_of, read_kohya

    if not lora.is_file():
        fail(f"no such file: {lora}")
    arch = architecture_of(read_kohya(lora)[1])
    if arch is None:
        fail(f"{lora}: not a LoRA file the bake wrote (no known ss_base_model_version)")
    family = family_for(arch)
    if family.diffusers_loads_kohya:
        typer.echo(f"{lora}: diffusers and ComfyUI load {arch} LoRA files as they are; nothing to write")
        return
    try:
        typer.echo(f"wrote {family.write_diffusers_form(lora)}")  # type: ignore[attr-defined]
    except ValueError as exc:  # a network with no such form (IA3)
        fail(f"{lora}: {exc}")


models_app = typer.Typer(no_args_is_help=True, help="The recipe's model keys: list them, pull known defaults, set one.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(recipe: Path = typer.Argument(..., help="Recipe TOML file.")) -> None:
    """Every model key: its value, whether it is there (and its size), and where a default comes from."""
    from bakery.models import describe, model_keys

    cfg = _load_quiet(recipe)
    rows = [describe(cfg, k) for k in model_keys()]
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['key']:<{width}}  {r['state']:<16}  {r['value']}\n{'':<{width}}  {r['source']}")


@models_app.command("pull")
def models_pull(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    key: str = typer.Argument(..., help="A model key (`bakery models list`), or `all` for every key with a default."),
    repo: Optional[str] = typer.Option(None, "--repo", help="Pull this hub repository instead of the default."),
    file: list[str] = typer.Option([], "--file", help="Files of --repo to pull (none: the whole repository)."),
) -> None:
    """Fetch a key's known default (or --repo) into the hugging face cache, sha256 checked; an unset key is set
    to it."""
    from bakery.models import DEFAULTS, ModelError, model_keys, pull

    cfg = _load_quiet(recipe)
    if key == "all" and repo:
        fail("--repo names one key's model: pull KEY --repo ORG/NAME")
    keys = [k for k in DEFAULTS if k in model_keys() and value_is_unset(cfg, k)] if key == "all" else [key]
    failed = []
    for k in keys:  # one key that cannot be had does not stop the others
        try:
            path = pull(k, repo, tuple(file))
        except ModelError as exc:
            failed.append(str(exc))
            continue
        if value_is_unset(cfg, k):
            _use(recipe, k, str(path))
        else:
            typer.echo(f"{k}: pulled {path}; the recipe names another (bakery models use {recipe} {k} {path})")
    if failed:
        fail("\n  ".join(failed))


@models_app.command("use")
def models_use(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    key: str = typer.Argument(..., help="A model key (`bakery models list`)."),
    path: str = typer.Argument(..., help="A file or folder (or, for train.* and autotag keys, a hub id)."),
) -> None:
    """Write the key into the recipe (its comments kept): a path under the recipe's folder is written relative."""
    _use(recipe, key, path)


def value_is_unset(cfg: Recipe, key: str) -> bool:
    from bakery.models import value_of

    return value_of(cfg, key) is None


def _use(recipe: Path, key: str, path: str) -> None:
    from bakery.models import DEFAULTS, ModelError, model_keys, recipe_value
    from bakery.recipe.edit import set_key

    if key not in model_keys():
        fail(f"{key} is not a model key (they are: {', '.join(model_keys())})")
    old = recipe.read_text(encoding="utf-8")
    try:
        value = recipe_value(recipe, path, key)
        for k, v in ({key: value} | (DEFAULTS[key].also if key in DEFAULTS else {})).items():
            set_key(recipe, k, v)
        load_recipe(recipe)
    except (ModelError, RecipeError) as exc:
        recipe.write_text(old, encoding="utf-8")  # the recipe as it was
        fail(str(exc))
    typer.echo(f"{recipe}: {key} = {value!r}")


def _load_quiet(recipe_path: Path) -> Recipe:
    try:
        return load_recipe(recipe_path)
    except RecipeError as exc:
        _bad_recipe(exc.path, exc.problems)


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # `python -m bakery.cli`
    main()
