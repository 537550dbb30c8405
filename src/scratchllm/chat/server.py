"""`scratchllm serve`: a run behind the OpenAI API, and a page to chat with it.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models (and /v1/models/ID),
GET /health, and the page at / (files from chat/static, nothing fetched from elsewhere). The API
is stateless, as OpenAI's is: each request carries its whole conversation; the worker's pool of
KV caches (worker.py) spares the prefill of what an earlier request already ran.

fastapi is imported at the top: this module is loaded by `scratchllm serve` only, and FastAPI reads
the routes' annotations, which must name its classes here.

Everything a client can get wrong is a 400 with OpenAI's error object, an unknown route or model a
404. A failure inside generation costs only its own request (an error event in its stream, or a
503) and is logged; the worker thread and every other request go on.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from scratchllm.chat.api import (
    ChatRequest,
    CompletionRequest,
    Reply,
    RequestError,
    error_body,
    param_of,
    usage_of,
)
from scratchllm.chat.engine import Engine
from scratchllm.chat.worker import DONE, Job, Worker
from scratchllm.util.errors import UserError
from scratchllm.util.log import REPORT, get_logger

logger = get_logger(__name__)


def _error(e: RequestError):
    kind = "not_found_error" if e.status == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(e), e.param, e.code, kind), status_code=e.status)


def _validation_message(err: dict) -> str:
    where = param_of(tuple(err.get("loc", ())))
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    return f"{where}: {err.get('msg', 'invalid value')}" if where else err.get("msg", "invalid request")


def _invalid(errors) -> RequestError:
    """Pydantic's most specific validation error as a RequestError (a value that matches no branch of a
    union has an error for each; the one reaching deepest says most)."""
    first: dict = max(errors, key=lambda e: len(e.get("loc", ())), default={})
    return RequestError(_validation_message(first), param_of(tuple(first.get("loc", ()))), "invalid_value")


async def _parse(request, model):
    """The request's body as `model`, whatever content type the client named (curl's -d sends JSON as a
    form); a RequestError if it is no JSON object of that shape."""
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: nested past Python's stack
        raise RequestError("the request body is not valid JSON", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None, "invalid_value")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise _invalid(e.errors()) from None


def install_error_handlers(app) -> None:
    """Every error as OpenAI's error object: 400 for a bad request, 404 for what is not here."""
    @app.exception_handler(RequestError)
    async def request_error(request, e: RequestError):
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        return _error(_invalid(e.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        status = 404 if e.status_code == 404 else 400 if e.status_code < 500 else e.status_code
        code = "not_found" if status == 404 else "method_not_allowed" if e.status_code == 405 else None
        return _error(RequestError(f"{request.method} {request.url.path}: {e.detail}", None, code, status))


class Service:
    """The engine, its worker and the model's name: what the routes need."""

    def __init__(self, engine: Engine, name: str, slots: int = 8):
        self.engine, self.name = engine, name
        self.worker = Worker(engine, slots)
        self.created = int(time.time())

    def model_card(self) -> dict:
        """The model as GET /v1/models lists it (with what the page needs to know about it)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "scratchllm",
                "context_length": self.engine.block_size, "chat": self.engine.is_chat,
                "note": self.engine.note}

    def check_model(self, model: str) -> None:
        """404 unless `model` is the one served."""
        if model != self.name:
            raise RequestError(f"the model {model!r} does not exist here; this server has {self.name!r}",
                               "model", "model_not_found", 404)

    def prompt_of(self, req: ChatRequest | CompletionRequest) -> list[int]:
        """The request's prompt ids, checked against the context."""
        param = "messages" if isinstance(req, ChatRequest) else "prompt"
        try:
            if isinstance(req, ChatRequest):
                ids = self.engine.prompt_ids([m.plain() for m in req.messages])
            else:
                ids = self.engine.text_ids(req.text())
        except RequestError:
            raise
        except ValueError as e:  # a conversation out of order, an empty message
            raise RequestError(f"{param}: {e}", param) from None
        if len(ids) > self.engine.block_size:
            raise RequestError(f"the prompt is {len(ids):,} tokens; this model's context holds "
                               f"{self.engine.block_size:,}", param, "context_length_exceeded")
        return ids

    def job(self, req: ChatRequest | CompletionRequest) -> Job:
        """A job for the request, checked, queued on the worker."""
        self.check_model(req.model)
        try:
            params = req.settings().check()
        except RequestError:
            raise
        except ValueError as e:  # the engine's check names the setting first
            raise RequestError(str(e), str(e).split()[0]) from None
        job = Job(self.prompt_of(req), params, asyncio.get_running_loop())
        self.worker.submit(job)
        return job


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _events(job: Job, reply: Reply, include_usage: bool):
    """The server-sent events of a streamed answer; the job is cancelled if the client goes away."""
    try:
        if reply.chat:
            yield _sse(reply.chunk(role=True, with_usage=include_usage))
        while (item := await job.out.get()) is not DONE:
            yield _sse(reply.chunk(item, with_usage=include_usage))
        stream = job.stream
        if job.error is not None or stream is None:
            yield _sse(error_body("generation failed; see the server's log", kind="server_error"))
        else:
            reason = "length" if stream.finish_reason == "length" else "stop"
            yield _sse(reply.chunk(None if reply.chat else "", reason, with_usage=include_usage))
            if include_usage:
                yield _sse(reply.chunk(usage=usage_of(stream)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a no-op once finished; stops generation when the client left mid-stream


async def _answer(service: Service, request: Request, req: ChatRequest | CompletionRequest, chat: bool):
    job = service.job(req)
    reply = Reply(service.name, chat)
    if req.stream:
        return StreamingResponse(_events(job, reply, req.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        checked = time.monotonic()
        while True:
            try:
                if await asyncio.wait_for(job.out.get(), timeout=0.5) is DONE:
                    break
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - checked > 0.5:  # twice a second: is anybody still waiting for it?
                checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
    finally:
        job.cancel()
    if job.error is not None or job.stream is None:
        return JSONResponse(error_body("generation failed; see the server's log", kind="server_error"),
                            status_code=503)
    reason = "length" if job.stream.finish_reason == "length" else "stop"
    return reply.whole(job.stream.text, reason, usage_of(job.stream))


def create_app(engine: Engine, name: str, slots: int = 8):
    """The FastAPI application serving `engine` as the model `name`."""
    service = Service(engine, name, slots)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.worker.stop()

    app = FastAPI(title="scratchllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(service, request, await _parse(request, ChatRequest), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _answer(service, request, await _parse(request, CompletionRequest), chat=False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [service.model_card()]}

    @app.get("/v1/models/{model}")
    async def model(model: str):
        service.check_model(model)
        return service.model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok", **service.worker.status()}

    static = Path(str(resources.files("scratchllm.chat") / "static"))

    @app.get("/")
    async def page():
        return FileResponse(static / "index.html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def _check_address(host: str, port: int) -> None:
    """A UserError now, before the model loads, if nothing can listen on host:port."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            s.bind(infos[0][4])
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, slots: int = 8) -> None:
    """Load a run and serve it until interrupted."""
    import uvicorn

    from scratchllm.runtime.distributed import pick_device

    if not 0 <= port < 65536:
        raise UserError(f"--port must be in 0..65535, not {port}")
    if slots < 1:
        raise UserError(f"--slots must be at least 1, not {slots}")
    _check_address(host, port)
    engine = Engine.from_run(run, pick_device("auto"))
    name = Path(run).resolve().name
    app = create_app(engine, name, slots)
    if engine.note:
        logger.warning("%s", engine.note)
    logger.info("serving %s as model %r on http://%s:%d/ (API at /v1)", run, name, host, port, extra=REPORT)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
