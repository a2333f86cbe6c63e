"""The review studio: a local FastAPI app over one recipe's work dir (pages rendered on the server).

Routes read through bakery/review/data.py and shape with bakery/review/views.py;
edits go through bakery/edits.py (its EditError becomes a 400 page). Files are
served only from inside the work dir (bakery/review/files.py), thumbnails by
hash only (bakery/review/thumbs.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from bakery.craft.caption import tagstats
from bakery.recipe import Recipe, load_recipe
from bakery.report import warning_counts
from bakery.review import data, edit_forms, files, thumbs, views
from bakery.review.views import StudioError

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def create_app(recipe_path: Path | str) -> FastAPI:
    recipe_path = Path(recipe_path).resolve()
    recipe = load_recipe(recipe_path)
    app = FastAPI(title="LoRA Bakery review studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.recipe, app.state.recipe_path, app.state.workdir = recipe, recipe_path, recipe.workdir.resolve()
    _errors(app)
    _pages(app)
    _decisions_and_runs(app)
    _edits(app)
    _files(app)
    for name in TEMPLATES.env.list_templates():  # compiled now, not on a first page
        TEMPLATES.get_template(name)
    return app


def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    recipe: Recipe = request.app.state.recipe
    return TEMPLATES.TemplateResponse(request, template, {"project": recipe.project.name, **context},
                                      status_code=status)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(StudioError)
    async def refused(request: Request, exc: StudioError) -> HTMLResponse:
        return page(request, "error.html", exc.status, message=str(exc))

    @app.exception_handler(data.CatalogBusy)
    async def busy(request: Request, exc: data.CatalogBusy) -> HTMLResponse:
        return page(request, "error.html", 503, message=str(exc))

    @app.middleware("http")
    async def same_origin_posts(request: Request, call_next):
        # A page of another site must not post edits to this one (the browser sends its Origin).
        origin = request.headers.get("origin")
        if request.method == "POST" and origin and urlsplit(origin).netloc != request.headers.get("host"):
            return HTMLResponse("bakery review: refused a form posted from another site", status_code=403)
        return await call_next(request)


def _dataset_filters(request: Request) -> views.Filters:
    q = request.query_params
    try:
        number = int(q.get("page", "1"))
    except ValueError:
        raise StudioError(400, "page: must be a whole number") from None
    flag = q.get("flag", "")
    if flag and flag not in views.FLAGS:
        raise StudioError(400, f"flag: unknown flag '{flag}' (one of {', '.join(views.FLAGS)})")
    return views.Filters(q.get("folder", ""), q.get("tag", ""), flag, number)


def _pages(app: FastAPI) -> None:
    @app.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/dataset", status_code=303)

    @app.get("/dataset", response_class=HTMLResponse)
    def dataset(request: Request) -> HTMLResponse:
        st = request.app.state
        f = _dataset_filters(request)
        ds = data.load_dataset(st.workdir, st.recipe)
        in_folder = views.filter_cards(ds.cards, views.Filters(folder=f.folder))
        shown = views.paginate(views.filter_cards(ds.cards, f), f.page)
        sources = data.source_tags(st.workdir, st.recipe, [c.hash for c in shown.items])
        views.fill_dropped(ds.cards, shown.items, sources, data.active_edits(st.workdir))
        return page(request, "dataset.html", run_id=ds.run_id, f=f, shown=shown, total=len(ds.cards),
                    warnings=ds.warnings,
                    folders=views.folder_counts(ds.cards), flags=views.flag_counts(in_folder),
                    tags=views.tag_counts(in_folder), titles=views.FLAG_TITLES)

    @app.get("/picture/{sha256}", response_class=HTMLResponse)
    def picture(request: Request, sha256: str) -> HTMLResponse:
        st = request.app.state
        if not views.HASH.match(sha256):
            raise StudioError(400, "picture: give its 64-digit sha256")
        ds = data.load_dataset(st.workdir, st.recipe)
        everything = ds.cards
        cards = [c for c in everything if c.hash == sha256]
        if not cards:
            raise StudioError(404, f"picture {sha256[:12]} is not in the last training set")
        sources = data.source_tags(st.workdir, st.recipe, [sha256])
        views.fill_dropped(everything, cards, sources, data.active_edits(st.workdir))
        chain = data.provenance(st.workdir, sha256)
        folders = [f for c in st.recipe.concepts for f in [c.name, *(o.name for o in c.outfits)]]
        edits = edit_forms.naming(st.workdir, cards[0].name, sha256)
        warned = [w for w in ds.warnings if any(views.picture_warnings([w], c, folder_too=True) for c in cards)]
        return page(request, "picture.html", cards=cards, card=cards[0], chain=chain, folders=folders, edits=edits,
                    warnings=warned, run_id=ds.run_id)


def _decisions_and_runs(app: FastAPI) -> None:
    @app.get("/decisions", response_class=HTMLResponse)
    def decisions(request: Request) -> HTMLResponse:
        st = request.app.state
        found = data.load_decisions(st.workdir)
        cards = data.load_dataset(st.workdir, st.recipe).cards  # the pictures a warning names link to their page
        return page(request, "decisions.html", warned=views.warning_rows(found["warnings"], cards),
                    counts=warning_counts(found["warnings"]), **found)

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request) -> HTMLResponse:
        st = request.app.state
        found = data.load_runs(st.workdir, str(st.recipe_path))
        with_stats = found["tag_runs"]
        b = request.query_params.get("b") or (with_stats[0] if with_stats else "")
        a = request.query_params.get("a") or (with_stats[1] if len(with_stats) > 1 else "")
        for run_id in (a, b):
            if run_id and run_id not in with_stats:
                raise StudioError(400, f"run: '{run_id[:40]}' has no tag statistics in this catalog")
        diff = tagstats.diff(data.tag_stats(st.workdir, a), data.tag_stats(st.workdir, b)) if a and b else None
        reports = [(r, files.work_relative(st.workdir, r["report_path"])) for r in found["evaluations"]]
        return page(request, "runs.html", a=a, b=b, diff=diff, reports=reports, prefect=views.prefect_ui(os.environ),
                    **{k: v for k, v in found.items() if k != "evaluations"})


def _edits(app: FastAPI) -> None:
    @app.get("/edits", response_class=HTMLResponse)
    def edits_list(request: Request) -> HTMLResponse:
        return page(request, "edits.html", edits=edit_forms.listed(request.app.state.workdir),
                    edits_file=edit_forms.api().edits_file(request.app.state.recipe_path).name)

    @app.post("/edits")
    async def add(request: Request) -> Response:
        form = await _form(request)
        made = edit_forms.parse(form)
        await run_in_threadpool(edit_forms.apply, request.app.state.workdir, made)
        return RedirectResponse(_next(form), status_code=303)

    @app.post("/edits/{edit_id}/undo")
    async def undo(request: Request, edit_id: int) -> Response:
        form = await _form(request)
        await run_in_threadpool(edit_forms.undo, request.app.state.workdir, edit_id)
        return RedirectResponse(_next(form, "/edits"), status_code=303)

    @app.post("/edits/{action}")
    async def transfer(request: Request, action: str) -> Response:
        if action not in ("export", "import"):
            raise StudioError(404, f"no edits action '{action[:40]}'")
        st = request.app.state
        await run_in_threadpool(edit_forms.transfer, st.workdir, st.recipe_path, action)
        return RedirectResponse("/edits", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form (the only kind these pages send), last value of each field."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise StudioError(415, "send the form url-encoded (application/x-www-form-urlencoded)")
    body = await request.body()
    if len(body) > 64 * 1024:
        raise StudioError(413, "form too large")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise StudioError(400, "form is not UTF-8") from None
    return {k: v[-1] for k, v in parsed.items()}


def _next(form: dict[str, str], default: str = "/dataset") -> str:
    """Where to go after a form: a path of this site only."""
    target = form.get("next", "") or default
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else default


def _files(app: FastAPI) -> None:
    @app.get("/thumb/{sha256}/{size}")
    def thumb(request: Request, sha256: str, size: int, mask: int = 0) -> FileResponse:
        try:
            path = thumbs.thumbnail(request.app.state.workdir, sha256, size, mask=bool(mask))
        except ValueError as exc:
            raise StudioError(400, str(exc)) from None
        except (FileNotFoundError, OSError) as exc:
            raise StudioError(404, str(exc)) from None
        return FileResponse(path, headers={"Cache-Control": "max-age=31536000, immutable"})

    @app.get("/files/{relative:path}")
    def work_file(request: Request, relative: str) -> FileResponse:
        path = files.safe_file(request.app.state.workdir, relative)
        if path is None:
            raise StudioError(404, "no such file in the work dir")
        return FileResponse(path)
