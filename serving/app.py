"""The server around the models: TF Serving's routes that KServe lacks (model status and
metadata, a version's or label's ``:predict``, TF Serving's metrics), readiness, the request
size limit and one-line errors, on KServe's app; and each serving process's table of models
(``SERVED``), which KServe's repository reads, its worker processes rebuild, and a watcher keeps
up with the base path."""

import asyncio
import contextlib
import logging
import threading
import time
import warnings
import zlib

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve import model_server
from kserve import logging as kserve_logging
from kserve.errors import InvalidInput, ModelNotFound, generic_exception_handler
from kserve.model_repository import ModelRepository

from serving import connections, tf_serving_metrics as tfs_metrics
from serving.model import ServedModel
from serving.options import ServeOptions
from serving.protocol import DeadlineExceeded, NotServed, V1Call
from serving.servables import AdapterTask, Backbones

SERVED = {}  # this process's served models by name: KServe's repository and the routes read it
_KNOWN = {}  # every model folder found, by name, served or waiting for a version that loads


class SizeLimit:
    """ASGI middleware: no request body over ``max_bytes`` reaches the app, however it comes
    (413). By its Content-Length, before reading (the body is read and dropped, so a client
    still sending sees the answer, not a reset); a chunked body, counted as it arrives and
    refused at the limit (the rest unread); ``Content-Encoding: gzip``, which TF Serving
    accepts, inflated here with the limit on the inflated size (a gzip bomb stops there).
    Other encodings are 415. The app gets the body whole, as it would read it."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    def _over(self, what):
        return JSONResponse({"error": f"the request body is {what}, over the server's limit of {self.max_bytes} bytes "
                                      "(--max_request_mb)"}, status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        size = headers.get(b"content-length", b"")
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        refusal = None
        if encoding not in (b"identity", b"gzip"):
            refusal = JSONResponse({"error": f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not accepted "
                                             "(send the body as it is, or gzip)"}, status_code=415)
        elif size.isdigit() and int(size) > self.max_bytes:
            refusal = self._over(f"{int(size)} bytes")
        if refusal is not None:
            while (await receive()).get("more_body"):
                pass
            return await refusal(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._over(f"over {self.max_bytes} bytes and still coming")(scope, receive, send)
            if not message.get("more_body"):
                break
        if encoding == b"gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(bytes(body), self.max_bytes + 1)
            except zlib.error as err:
                return await JSONResponse({"error": f"the gzip body cannot be inflated ({err})"},
                                          status_code=400)(scope, receive, send)
            if len(body) > self.max_bytes:
                return await self._over("over that once inflated (gzip)")(scope, receive, send)
            if not inflater.eof:
                return await JSONResponse({"error": "the gzip body is cut short"}, status_code=400)(scope, receive, send)
            kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
            scope = {**scope, "headers": kept + [(b"content-length", str(len(body)).encode())]}
        whole = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        return await self.app(scope, replay, send)


class OneLine(logging.Filter):
    """KServe logs a bad request with its traceback: one line instead (the client has the message)."""

    def filter(self, record):
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, (InvalidInput, ModelNotFound, NotServed)):
            record.msg, record.args, record.exc_info = f"bad request: {err}", (), None
        return True


def not_ready():
    """Why this server is not ready (KServe's readiness route, ``/v2/health/ready``), or None:
    it is stopping, or a model it was given has no version AVAILABLE yet."""
    stopping = connections.draining()
    if stopping:
        return stopping
    waiting = sorted(name for name, model in _KNOWN.items() if not model.ready)
    if waiting:
        return f"no version AVAILABLE yet for {', '.join(waiting)}"
    return None


def served(name):
    """The served model ``name``; NotServed names those that are."""
    model = SERVED.get(name)
    if model is None:
        raise NotServed(f"model {name!r} is not served (served: {', '.join(SERVED) or 'none'})")
    return model


def add_routes(app, max_request_bytes):
    """TF Serving's routes that KServe's v1 lacks, before KServe's own (the first match wins):
    model and version status and metadata, a version's ``:predict``; and the request size limit."""

    app.add_middleware(SizeLimit, max_bytes=max_request_bytes)

    async def not_served(_, err):
        return JSONResponse({"error": str(err)}, status_code=404)

    app.add_exception_handler(NotServed, not_served)

    async def past_deadline(_, err):
        return JSONResponse({"error": str(err)}, status_code=504)

    app.add_exception_handler(DeadlineExceeded, past_deadline)

    async def off_schema(_, err):
        """A v2 body that KServe's schema refuses: 400 with one line (FastAPI's own answer is a
        422 that echoes the input, and a 500 when that input holds Infinity)."""
        first = (err.errors() or [{}])[0]
        parts = [str(part) for part in first.get("loc", ())[1:]]  # after "body"
        where = ".".join(parts[1:] if parts and parts[0][:1].isupper() else parts) or "the body"  # not the class
        return JSONResponse({"error": f"the request does not fit the protocol's schema at {where}: "
                                      f"{first.get('msg', 'invalid')}"[:300]}, status_code=400)

    app.add_exception_handler(RequestValidationError, off_schema)

    def ready():
        waiting = not_ready()
        if waiting:
            return JSONResponse({"ready": False, "error": waiting}, status_code=503)
        return {"ready": True}

    app.add_api_route("/v2/health/ready", ready, methods=["GET"])

    async def undecodable(request, err):
        """KServe decodes a v2 binary body (its binary extension) before any model sees it: a
        body whose tensors do not fit its JSON header is the client's error."""
        if request.url.path.endswith("/infer") and "inference-header-content-length" in request.headers:
            return JSONResponse({"error": f"the binary data does not fit the request's header "
                                          f"({str(err).splitlines()[0][:120]})"}, status_code=400)
        return await generic_exception_handler(request, err)

    app.add_exception_handler(ValueError, undecodable)
    app.add_api_route("/v1/models/{name}", lambda name: served(name).status(), methods=["GET"])
    app.add_api_route("/v1/models/{name}/metadata", lambda name: served(name).model_metadata(), methods=["GET"])
    app.add_api_route("/v1/models/{name}/versions/{version}",
                      lambda name, version: served(name).status(version=version), methods=["GET"])
    app.add_api_route("/v1/models/{name}/labels/{label}",
                      lambda name, label: served(name).status(label=label), methods=["GET"])
    app.add_api_route("/v1/models/{name}/versions/{version}/metadata",
                      lambda name, version: served(name).model_metadata(version=version), methods=["GET"])
    app.add_api_route("/v1/models/{name}/labels/{label}/metadata",
                      lambda name, label: served(name).model_metadata(label=label), methods=["GET"])

    async def predict_version(name: str, version: str, request: Request):
        return (await served(name)(V1Call(await request.body(), version=version)))[0]

    async def predict_label(name: str, label: str, request: Request):
        return (await served(name)(V1Call(await request.body(), label=label)))[0]

    app.add_api_route("/v1/models/{name}/versions/{version}:predict", predict_version, methods=["POST"])
    app.add_api_route("/v1/models/{name}/labels/{label}:predict", predict_label, methods=["POST"])
    app.add_api_route(tfs_metrics.PATH, lambda: Response(tfs_metrics.exposition(), media_type=tfs_metrics.CONTENT_TYPE),
                      methods=["GET"])


_BACKBONES = Backbones()
_SET_UP = []


def served_model(name, folder, options, say=print, task=None):
    """A model of ``folder`` (its newest complete version loaded, or none yet) or the adapter
    task of run folder ``task``, entered in ``SERVED``; ValueError when the task cannot load."""
    servable = AdapterTask(task, _BACKBONES) if task else None
    model = ServedModel(name, folder, options, say, servable, options.config(name))
    model.task = task
    model.refresh()
    _KNOWN[name] = model
    if model.ready:
        SERVED[name] = model
    return model


def set_up_process(options, say=print, watching=True):
    """What every serving process does once: TF Serving's routes on KServe's app, one-line bad
    requests in the log, and the watcher of the base path (per-request lines are
    ``connections.Limits.log_requests``)."""
    if _SET_UP:
        return
    _SET_UP.append(options)
    kserve_logging.logger.addFilter(OneLine())
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")  # KServe's, on newer FastAPI
    add_routes(model_server.app, options.max_request_bytes)
    if watching and options.watched:
        threading.Thread(target=watch, args=(options, say), daemon=True).start()


def watch(options, say=print):
    """Poll the base path for new versions of the served models and for new model folders."""
    while True:
        time.sleep(options.poll_seconds)
        try:
            found = options.folders()
        except (OSError, ValueError):
            continue
        for name, folder in found.items():
            if name not in _KNOWN:
                _KNOWN[name] = ServedModel(name, folder, options, say, config=options.config(name))
            model = _KNOWN[name]
            if model.folder == folder and model.refresh():
                SERVED.setdefault(name, model)


class Repository(ModelRepository):
    """KServe's model repository over ``SERVED``. Pickled into KServe's worker processes
    (``--workers``), it is rebuilt there: the process set up, each model loaded afresh."""

    def __init__(self):
        super().__init__()
        self.models = SERVED

    def __reduce__(self):
        options = _SET_UP[0] if _SET_UP else ServeOptions()
        specs = [(name, model.folder, model.task) for name, model in _KNOWN.items()]
        return _worker_repository, (options, specs)


def _worker_repository(options, specs):
    """In a worker process: the models load in a thread, so the process answers KServe's
    liveness pings meanwhile, and its server starts accepting requests only once they are in."""

    def load():
        for name, folder, task in specs:
            if name not in _KNOWN:
                try:
                    served_model(name, folder, options, task=task)
                except ValueError as err:
                    print(f"serve: error: {name}: {err}; not served", flush=True)
        if options.watched:
            watch(options)

    set_up_process(options, watching=False)
    loading = threading.Thread(target=load, daemon=True)
    loading.start()

    router = model_server.app.router
    lifespan = router.lifespan_context

    @contextlib.asynccontextmanager
    async def after_loading(app):
        while not all(name in _KNOWN for name, _, _ in specs) and loading.is_alive():
            await asyncio.sleep(0.05)
        async with lifespan(app) as state:
            yield state

    router.lifespan_context = after_loading
    return Repository()
