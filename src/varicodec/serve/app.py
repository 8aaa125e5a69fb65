"""The web application: one page, a small JSON API, limits on what comes in.

=======  ================================  ============================================
method   path                              what
=======  ================================  ============================================
GET      ``/``                             the page (``static/index.html``)
GET      ``/static/…``                     its CSS and JavaScript (no CDN, no build step)
GET      ``/api/info``                     model, limits, codecs, samples
POST     ``/api/compare``                  multipart: ``file`` or ``sample``, ``target``
                                           (quality | bpp | jpeg), ``value``, optional
                                           ``refine`` (steps, quality only) → 202 + job id
GET      ``/api/jobs/{id}``                state, progress, message, result (JSON)
GET      ``/api/jobs/{id}/files/{name}``   ``original.png``, ``<codec>.png`` (decoded),
                                           ``ours.vcd``, ``jpeg.jpg``, … (``?download=1``)
DELETE   ``/api/jobs/{id}``                forget a job now
=======  ================================  ============================================

Limits: request bodies over ``max_upload_bytes`` get 413 before they are read
in full; images over ``max_pixels`` are refused from their header by the
codec's own size check (:func:`varicodec.imageio.check_size`), before any pixel
is decoded. Upload bodies live in memory (Starlette spools a file part over
1 MiB to a temporary file, closed and so deleted when the request ends). Every
error is JSON ``{"error": one line}``, shown on the page. Requests must name
this machine in their ``Host`` header (``127.0.0.1``, ``localhost``, ``::1`` or
the address served), which keeps other web sites' pages from reaching the
server through DNS rebinding.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..codec import resolve_model
from ..codec.pretrained import ModelSpec
from ..errors import VaricodecError
from ..imageio import MAX_PIXELS, open_image
from .compare import CLASSICAL, MAX_REFINE_STEPS, Target
from .jobs import Busy, JobStore, Worker
from .samples import SAMPLES, load_sample

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "create_app", "read_image"]

STATIC = Path(__file__).with_name("static")
#: 16 Mpx: a 12 Mpx phone photo or a 4096×4096 image, well inside the codec's bound
DEFAULT_MAX_PIXELS = min(1 << 24, MAX_PIXELS)
DEFAULT_MAX_UPLOAD_BYTES = 32 << 20
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_READING = threading.Lock()


def read_image(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """Decode an uploaded file to ``H×W×3`` uint8 and notes for the page.

    ``ValueError`` with a one-line reason for an empty file, a file that is not an
    image, a damaged one, or one over ``max_pixels`` (checked from the header).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError(f"{name}: the file is empty")
    # the warnings filters are process-wide: one reader at a time keeps each
    # upload's notes its own
    with _READING, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(io.BytesIO(data)) as im:
                src = open_image(im, max_pixels)
        except UnidentifiedImageError:
            raise ValueError(f"{name}: not an image, or not a format this server can read "
                             "(PNG, JPEG, WebP, AVIF, TIFF, BMP, GIF …)") from None
        except Image.DecompressionBombError as e:
            raise ValueError(f"{name}: {e}") from None
        except VaricodecError as e:
            raise ValueError(f"{name}: {e}") from None
        except (OSError, SyntaxError, EOFError, ValueError, IndexError) as e:
            raise ValueError(f"{name}: cannot read the image ({_one_line(e)})") from None
    notes = [str(w.message) for w in caught
             if not issubclass(w.category, DeprecationWarning | FutureWarning)]
    if src.alpha is not None:
        notes.append("transparency ignored: every codec is compared on the RGB pixels")
    return src.rgb, notes


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def _safe_stem(name: str) -> str:
    stem = Path(name.replace("\\", "/")).stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:60].strip("._") or "image"


class UploadTooLarge(Exception):
    """A request body went over the limit while it was being read."""


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get a JSON 413.

    A declared ``Content-Length`` over the limit is refused before anything is
    read; a body without one (chunked) is counted as it arrives and
    :class:`UploadTooLarge` is raised from ``receive`` at the first byte over.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.too_large()(scope, receive, send)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge()
            return message

        await self.app(scope, limited, send)

    def too_large(self) -> JSONResponse:
        return _error(413, f"the upload is larger than this server's limit of "
                      f"{self.max_bytes / (1 << 20):g} MiB")


def create_app(model: ModelSpec = None, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 2, max_jobs: int = 8,
               max_waiting: int = 8, allowed_hosts: list[str] | None = None) -> Starlette:
    """The application for ``model`` (a :class:`~varicodec.models.VaricodecModel`, registry
    name, weights path or ``None`` for the bundled model).

    ``threads`` comparisons run at once (each with its own model copy),
    ``max_waiting`` may be running or queued, ``max_jobs`` finished ones are kept
    for the page. ``allowed_hosts``: ``Host`` header values accepted (default: this
    machine's loopback names).
    """
    if not 1 <= max_pixels <= MAX_PIXELS:
        raise ValueError(f"max_pixels must be 1..{MAX_PIXELS}, got {max_pixels}")
    if max_upload_bytes < 1:
        raise ValueError(f"the upload limit must be positive, got {max_upload_bytes}")
    m = resolve_model(model)
    worker = Worker(m, threads=threads, max_waiting=max_waiting,
                    store=JobStore(max_jobs=max_jobs))
    from ..models.refine import check_refinable

    try:
        check_refinable(m)
        not_refinable = None
    except ValueError as e:
        not_refinable = str(e)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        r = m.lmbda_range
        from ..eval.classical import CODECS

        codecs = {name: {"label": label, "available": CODECS[name].check() is None,
                         "problem": CODECS[name].check()}
                  for name, (label, _, _) in CLASSICAL.items()}
        return JSONResponse({
            "model": {"name": m.name, "gated": bool(m.gated),
                      "variable_rate": bool(m.variable_rate),
                      "lmbda_range": None if r is None else [r.min, r.max],
                      "source": getattr(m, "source", None),
                      "refine": {"available": not_refinable is None, "problem": not_refinable,
                                 "max_steps": MAX_REFINE_STEPS}},
            "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels},
            "codecs": codecs, "samples": SAMPLES,
        })

    async def compare(request: Request) -> Response:
        try:
            async with request.form(max_files=1, max_fields=8) as form:
                target = Target.parse(str(form.get("target") or "quality"),
                                      str(form.get("value") or "5"),
                                      str(form.get("refine") or "0"))
                if target.refine and not_refinable:
                    return _error(400, not_refinable)
                upload, sample = form.get("file"), form.get("sample")
                if isinstance(upload, UploadFile) and (upload.filename or upload.size):
                    name = upload.filename or "upload"
                    data = await upload.read()
                elif isinstance(sample, str) and sample:
                    name, data = sample, None
                else:
                    return _error(400, "choose an image file, drop one on the page, "
                                  "or pick a sample")
        except ValueError as e:
            return _error(400, str(e))
        try:
            if data is None:
                rgb, notes = await run_in_threadpool(load_sample, name), []
            else:
                rgb, notes = await run_in_threadpool(read_image, data, name, max_pixels)
        except ValueError as e:
            return _error(400, str(e))
        finally:
            data = None  # the upload's bytes are not kept past decoding
        try:
            job = worker.submit(rgb, target, name=name, notes=notes)
        except Busy as e:
            return _error(429, str(e))
        return JSONResponse({"job": job.id, "status": f"/api/jobs/{job.id}"}, status_code=202)

    async def job_status(request: Request) -> Response:
        job = worker.store.get(request.path_params["job"])
        if job is None:
            return _error(404, "no such comparison (finished ones are kept for a while only)")
        return JSONResponse(job.status(), headers={"Cache-Control": "no-store"})

    async def job_file(request: Request) -> Response:
        job = worker.store.get(request.path_params["job"])
        name = request.path_params["name"]
        if job is None or name not in job.files:
            return _error(404, "no such file")
        data, media_type = job.files[name]
        headers = {"Cache-Control": "no-store"}
        if request.query_params.get("download"):
            headers["Content-Disposition"] = (
                f'attachment; filename="{_safe_stem(job.name)}.{name}"')
        return Response(data, media_type=media_type, headers=headers)

    async def job_delete(request: Request) -> Response:
        if not worker.store.remove(request.path_params["job"]):
            return _error(404, "no such comparison")
        return Response(status_code=204)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def too_large(request: Request, exc: Exception) -> Response:
        return BodyLimit(None, max_upload_bytes).too_large()

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        worker.shutdown()

    hosts = list(allowed_hosts) if allowed_hosts is not None else list(LOCAL_HOSTS)
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/info", info),
            Route("/api/compare", compare, methods=["POST"]),
            Route("/api/jobs/{job}", job_status),
            Route("/api/jobs/{job}", job_delete, methods=["DELETE"]),
            Route("/api/jobs/{job}/files/{name}", job_file),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
                    Middleware(BodyLimit, max_bytes=max_upload_bytes)],
        exception_handlers={HTTPException: http_error, UploadTooLarge: too_large},
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.model = m
    return app
