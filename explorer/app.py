"""`mapcap explorer`: one local page to explain an image and to browse a run (FastAPI, served on localhost).

The page (explorer/static/index.html) is plain HTML and a little JS, served from here, no CDN. The JSON
API below does the work through tasks/ and storage/; images travel as data URIs. explorer/guard.py decides
who may call it (loopback hosts, the launch's token) and which files it may open.
"""
from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from mapcap.explorer.checks import DecodeGate, check_fields, check_pretrained
from mapcap.explorer.guard import Guard, Limits, PathRefused, allowed_folders, check_image_path

from mapcap.storage.query import QueryError, connect, named_query, predictions_for
from mapcap.tasks.data import ImageLoadError, decode_image, load_image
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.single_image import explain_image
from mapcap.tasks.models import load_model, resolve_spec
from mapcap.tasks.pipeline.plan import result_notes
from mapcap.tasks.report.overlay import overlay_row
from mapcap.tasks.relevancy.methods import METHODS
from mapcap.tasks.report.html import data_uri, explained_images, png_bytes
from mapcap.tasks.report.plots import property_scatter

STATIC = Path(__file__).resolve().parent / "static"
LIMITS = Limits()  # the request models' bounds on texts (uploads: per app, --max-upload-mb)
log = logging.getLogger(__name__)
Text = Annotated[str, Field(max_length=LIMITS.max_text_chars)]


class ImageRequest(BaseModel):
    image_b64: str | None = Field(None, description="the uploaded file, base64 (a data URL is accepted)")
    image_path: str | None = Field(None, description="or a path on this machine (an image of a run)")
    model: str = "toy"
    pretrained: str = "toy"
    method: str | None = None  # None: the default of the model's image tower
    start_layer: int | None = None


class ExplainRequest(ImageRequest):
    texts: list[Text] = Field(max_length=LIMITS.max_texts)


class GroundRequest(ImageRequest):
    caption: Text


class ReprocessRequest(BaseModel):
    run: str
    classes: list[str] = Field([], max_length=1000)


def _image(req: ImageRequest, root: str, limits: Limits, decode: DecodeLimits):
    """The request's image: an upload up to the size limit, or a regular file of the results root or a run's
    dataset (a FIFO is refused unopened); either within the run's pixel budget and file-size cap (`decode`)."""
    if req.image_b64:
        data = req.image_b64.split(",", 1)[1] if req.image_b64.startswith("data:") else req.image_b64
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError as e:
            raise ValueError("the upload is not valid base64 data") from e
        if len(raw) > limits.max_upload_bytes:
            raise HTTPException(413, limits.upload_too_large("the upload", len(raw)))
        return decode_image(raw, "the uploaded file", limits=decode)
    if req.image_path:
        datasets = [r["dataset"] for r in named_query(connect(root), "run_datasets").to_pylist()]
        path = check_image_path(req.image_path, allowed_folders(root, datasets))
        if path.is_file() and path.stat().st_size > limits.max_upload_bytes:
            raise HTTPException(413, limits.upload_too_large(req.image_path, path.stat().st_size))
        return load_image(str(path), limits=decode)
    raise ValueError("upload an image or give the path of one")


class Serving:
    """What every explain of one app shares: its limits, the folders weights may come from, the decode gate."""

    def __init__(self, root: str, limits: Limits, decode: DecodeLimits, allow_weights: tuple[str, ...]):
        self.root, self.limits, self.decode, self.gate = root, limits, decode, DecodeGate()
        self.weights = allowed_folders(root, []) + [Path(f).expanduser().resolve() for f in allow_weights]

    def explain(self, req: ImageRequest, texts: list[str]) -> dict:
        """Fields checked before anything is read (pretrained) or once the model is known (method, start layer:
        422 naming what fits); the image decoded within the limits; a few explains at a time."""
        if req.method is not None and req.method not in METHODS:
            raise HTTPException(422, f"unknown method {req.method!r}; choose one of {sorted(METHODS)}")
        pretrained = check_pretrained(req.model, req.pretrained, self.weights)
        with self.gate.slot():
            image = _image(req, self.root, self.limits, self.decode)  # refused or unreadable: before any model loads
            try:
                spec = resolve_spec(req.model, pretrained, "auto", "fp32")
            except ValueError as e:
                raise HTTPException(422, str(e)) from e
            lm = load_model(spec)
            method, start = check_fields(lm, req.method, req.start_layer)
            notes = result_notes(lm.spec.name, lm.spec.pretrained, ())  # random weights: said above the maps
            return explain_image(lm, image, texts, method, start) | {"notes": notes}


def make_app(root: str, token: str | None, allow_hosts: tuple[str, ...] = (),
             max_upload_mb: float = LIMITS.max_upload_mb, allow_weights: tuple[str, ...] = (),
             decode: DecodeLimits = DEFAULT_LIMITS) -> FastAPI:
    """The explorer app behind its guard. `token`: what every API call must send (None: no token, for a
    proxy that does its own auth); `allow_hosts`: Host names served beside loopback's; `allow_weights`: folders
    checkpoints may be loaded from beside the results root; `decode`: per-image limits, as a run's."""
    limits = Limits(max_upload_mb=max_upload_mb, max_texts=LIMITS.max_texts, max_text_chars=LIMITS.max_text_chars)
    serving = Serving(root, limits, decode, tuple(allow_weights))
    app = FastAPI(title="MapCap explorer", docs_url=None, redoc_url=None)  # no unguarded doc pages
    app.add_middleware(Guard, token=token, allow_hosts=tuple(allow_hosts), limits=limits)

    async def bad_input(request: Request, exc: Exception) -> JSONResponse:
        """Bad input → 400 with the message that names the fix (shown on the page)."""
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    for error in (ValueError, ImageLoadError, QueryError, FileNotFoundError):
        app.add_exception_handler(error, bad_input)
    app.add_exception_handler(PathRefused, refused)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        runs = named_query(connect(root), "runs_compared").to_pylist()
        return {"root": root, "runs": [r["run_id"] for r in runs][::-1], "methods": sorted(METHODS),
                "prefect_api": bool(os.environ.get("PREFECT_API_URL"))}

    @app.post("/api/explain")
    def explain(req: ExplainRequest) -> dict:
        texts = [t.strip() for t in req.texts]
        r = serving.explain(req, texts)
        return {"texts": texts, "probs": r["probs"].tolist(), "start_layer": r["start_layer"],
                "overlays": [data_uri(png_bytes(overlay_row(r["image"], [m], [t[:30]], tile=192)))
                             for t, m in zip(texts, r["maps"])],
                "tokens": r["tokens"]}

    @app.post("/api/ground")
    def ground(req: GroundRequest) -> dict:
        words = [w.strip(".,;:!?") for w in req.caption.split() if w.strip(".,;:!?")]
        if len(words) > limits.max_texts:
            raise HTTPException(422, f"the caption has {len(words)} words; the limit is {limits.max_texts}")
        r = serving.explain(req, words)
        return {"words": words, "overlays": [data_uri(png_bytes(overlay_row(r["image"], [m], [w[:14]], tile=112)))
                                             for w, m in zip(words, r["maps"])]}

    @app.get("/api/runs/{run}/classes")
    def classes(run: str) -> list[dict]:
        return named_query(connect(root), "per_class_table", run).to_pylist()

    @app.get("/api/runs/{run}/notes")
    def notes(run: str) -> list[str]:
        """What a reader must know first: random weights, a model that does not know the classes."""
        con = connect(root)
        model = named_query(con, "run_model", run).to_pylist()
        names = [r["class_name"] for r in named_query(con, "per_class_table", run).to_pylist()]
        return result_notes(model[0]["model"], model[0]["pretrained"], names) if model else []

    @app.get("/api/runs/{run}/templates")
    def templates(run: str) -> list[str]:
        return [r["template"] for r in named_query(connect(root), "per_template_accuracy", run).to_pylist()]

    @app.get("/api/runs/{run}/images")
    def images(run: str, class_name: str | None = None, subset: str = "all", template: str = "ensemble",
               limit: int = Query(24, ge=1, le=500)) -> list[dict]:
        if subset not in ("all", "correct", "wrong"):
            raise ValueError(f"subset {subset!r}: choose all, correct or wrong")
        con = connect(root)
        correct = None if subset == "all" else subset == "correct"
        preds = predictions_for(con, run, template, class_name or None, correct)
        out = []
        for e in explained_images(con, run, preds, limit):
            png = e.pop("png")
            out.append({**e, "overlay": data_uri(png)})
        return out

    @app.get("/api/runs/{run}/trends")
    def trends(run: str) -> dict:
        con = connect(root)
        points = named_query(con, "property_points", run).to_pylist()
        stats = named_query(con, "accuracy_vs_property", run).to_pylist()
        if not points:
            return {"plot": None, "stats": []}
        cap = points[0]["captioner"]
        png = property_scatter([p for p in points if p["captioner"] == cap],
                               {s["property"]: s for s in stats if s["captioner"] == cap})
        return {"plot": data_uri(png), "stats": stats}

    @app.post("/api/reprocess")
    def reprocess(req: ReprocessRequest) -> dict:
        if not os.environ.get("PREFECT_API_URL"):
            raise HTTPException(409, "reprocessing is off: no Prefect API is configured (set PREFECT_API_URL to "
                                     "your server and deploy deployments/prefect.yaml, see 'Run it as a service')")
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_UI_URL

        try:
            fr = run_deployment("reprocess/reprocess", timeout=0, parameters={"params": {
                "run_name": req.run, "out": root, "classes": req.classes or None}})
        except Exception as e:  # the API said no (no such deployment, server down): tell the page why
            raise HTTPException(502, f"could not start the reprocess deployment: {e}") from e
        ui = PREFECT_UI_URL.value()
        return {"id": str(fr.id), "state": fr.state.name if fr.state else None,
                "url": f"{ui}/runs/flow-run/{fr.id}" if ui else None}

    @app.get("/api/flow-runs/{flow_run_id}")
    def flow_run_state(flow_run_id: str) -> dict:
        if not os.environ.get("PREFECT_API_URL"):  # the client would start a temporary server of its own
            raise HTTPException(409, "flow runs are off: no Prefect API is configured (set PREFECT_API_URL)")
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(flow_run_id)
        return {"id": flow_run_id, "state": fr.state.name if fr.state else None}

    return app


def serve_explorer(root: str, token: str | None, port: int = 8765, host: str = "127.0.0.1",
                   allow_hosts: tuple[str, ...] = (), max_upload_mb: float = LIMITS.max_upload_mb,
                   allow_weights: tuple[str, ...] = (), decode: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Serve on loopback; no access log (the page's first request carries the token in its URL). `decode`:
    per-image limits (`--max-pixels`, `--max-file-mb`)."""
    import uvicorn

    if token is None:
        log.warning("the explorer runs without a token (--no-token): any local process, and any web page that "
                    "reaches %s:%d through an allowed host, can call its API; put an authenticating proxy in front",
                    host, port)
    app = make_app(root, token, allow_hosts, max_upload_mb, allow_weights, decode)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


__all__ = ["make_app", "serve_explorer"]
