"""``selfextend-gguf serve``: llama-cpp-python's OpenAI-compatible server with a :class:`LongLlama` behind it.

The app is llama-cpp-python's own (``llama_cpp.server.app.create_app``): the same routes
(``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, streaming over SSE, ...), the
same request locking and error responses. Only the model differs. ``create_app`` builds its
model through ``llama_cpp.server.model.LlamaProxy``, whose
``load_llama_from_model_settings`` constructs a ``llama_cpp.Llama``; :func:`create_app`
here hands it :class:`LongLlamaProxy`, which constructs a :class:`LongLlama` from
:class:`LongModelSettings` (``ModelSettings`` plus ``group_size``, ``window``, ``mode``).
Nothing in llama_cpp's code is modified: the proxy class is swapped only while ``create_app`` runs.

Every error answer is OpenAI-style, ``{"error": {"message", "type", "param", "code"}}``, with
a 4xx status for what the client sent (invalid JSON or UTF-8, a wrong field type, a token id
outside the vocabulary, a prompt longer than ``n_ctx``, also when streaming) and a 500 with
a generic message for the server's own failures; no message carries a traceback or a
server path. See :func:`error_answer`, the middleware :class:`OpenAIErrors`, and
:func:`_answer_route_errors` (llama_cpp's routes format the errors they catch themselves).

Needs the ``server`` extra: ``pip install 'selfextend-gguf[server]'`` (fastapi, uvicorn,
sse-starlette, starlette-context, pydantic-settings). Importing this module checks for them.

    from selfextend_gguf.server import create_app
    app = create_app("model.gguf", n_ctx=32768, group_size=4, window=1024, mode="exact")
    # then: uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import inspect
import json
import logging
import re
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

from .errors import MissingExtraError, SelfExtendConfigError
from .long_llama import LongLlama, llama_cpp

try:
    import uvicorn  # noqa: F401  (not used here: checked so that `serve` fails early and clearly)
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from llama_cpp.server import app as _app_module
    from llama_cpp.server.errors import ErrorResponse, ErrorResponseFormatters, RouteErrorHandler
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
    from pydantic_settings import SettingsConfigDict
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(
        f"the server needs llama-cpp-python's server dependencies ({e.name} is missing). "
        "Install them with: pip install 'selfextend-gguf[server]'") from e

#: ModelSettings fields that need more than passing through, and are not supported behind a LongLlama
_UNSUPPORTED = ("clip_model_path", "hf_pretrained_model_name_or_path", "hf_tokenizer_config_path", "draft_model",
                "chat_template_kwargs")


_LOG = logging.getLogger(__name__)


class LongModelSettings(ModelSettings):
    """llama-cpp-python's ``ModelSettings`` plus the self-extend setting of :class:`LongLlama`.

    Unknown fields are refused (pydantic-settings' default, stated here so that it stays so):
    a misspelled ``grop_size`` must not silently serve the automatic setting. Environment
    variables (``N_CTX``, ``GROUP_SIZE``, ...) are still read, and unknown ones ignored.
    """

    model_config = SettingsConfigDict(extra="forbid")

    #: None: LongLlama's default (512, exact mode's smaller one, see selfextend_gguf.ubatch)
    n_ubatch: Optional[int] = None  # type: ignore[assignment]
    group_size: Optional[int] = None
    window: Optional[int] = None
    #: None: LongLlama's default (exact mode; shift mode where exact mode refuses the model)
    mode: Optional[str] = None
    rpc_servers: Optional[List[str]] = None


def _kv_overrides(items: Optional[List[str]]) -> Optional[Dict[str, Union[bool, int, float, str]]]:
    """``key=type:value`` strings (llama_cpp.server's format) to the dict Llama takes."""
    if not items:
        return None
    casts = {"bool": lambda v: v.lower() in ("true", "1"), "int": int, "float": float, "str": str}
    out: Dict[str, Union[bool, int, float, str]] = {}
    for item in items:
        key, _, typed = item.partition("=")
        kind, _, value = typed.partition(":")
        if kind not in casts or not value:
            raise SelfExtendConfigError(f"kv override {item!r} is not key=type:value with type one of {tuple(casts)}")
        out[key] = casts[kind](value)
    return out


class LongLlamaProxy(LlamaProxy):
    """``LlamaProxy`` whose models are :class:`LongLlama` instances."""

    @staticmethod
    def load_llama_from_model_settings(settings: ModelSettings) -> LongLlama:  # type: ignore[override]
        """Construct a :class:`LongLlama` from ``settings`` (plain ``ModelSettings`` get automatic G/W)."""
        used = [name for name in _UNSUPPORTED if getattr(settings, name, None)]
        if used:
            raise SelfExtendConfigError(
                f"the selfextend-gguf server does not support {', '.join(used)} (multimodal, external "
                "tokenizers and draft models are not wired to LongLlama); remove them from the settings.")
        accepted = inspect.signature(llama_cpp.Llama.__init__).parameters
        kwargs: Dict[str, Any] = {name: getattr(settings, name) for name in type(settings).model_fields
                                  if name in accepted and name not in ("model_path", "kv_overrides")}
        kwargs["kv_overrides"] = _kv_overrides(settings.kv_overrides)
        for name in ("group_size", "window", "mode", "rpc_servers"):
            if getattr(settings, name, None) is not None:
                kwargs[name] = getattr(settings, name)
        if settings.hf_model_repo_id is not None:
            llm = LongLlama.from_pretrained(settings.hf_model_repo_id, settings.model, **kwargs)
        else:
            llm = LongLlama(settings.model, **kwargs)
        if settings.cache:
            cache_cls = llama_cpp.LlamaDiskCache if settings.cache_type == "disk" else llama_cpp.LlamaRAMCache
            llm.set_cache(cache_cls(capacity_bytes=settings.cache_size))
        return llm


def _check_limit_concurrency(limit: Optional[int]) -> None:
    """Refuse a ``limit_concurrency`` below 1: it would refuse every request.

    Starlette builds the middleware stack only at the first request, so :class:`ConcurrencyLimit`
    alone would let such a server start and then answer every request with a 500.
    """
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SelfExtendConfigError(
            f"limit_concurrency must be a whole number >= 1 (the most requests in flight at once), got {limit!r}; "
            "leave it unset (None; no --limit-concurrency) to let all requests queue.")


def _check_setting_names(settings: Dict[str, Any]) -> None:
    """``TypeError`` for a keyword that is no :class:`LongModelSettings` field, naming the closest field."""
    fields = LongModelSettings.model_fields
    for name in settings:
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; the accepted ones are LongModelSettings' fields."
            raise TypeError(f"create_app() got an unexpected keyword argument {name!r}{hint}")


class ConcurrencyLimit:
    """ASGI middleware: refuse HTTP requests beyond ``limit`` in flight with a JSON 503.

    The app runs one request on the model at a time and queues the rest; this bounds
    the queue. A streaming request counts until its last event is sent. The refusal
    has an OpenAI-style error body and ``Retry-After``, so clients can back off.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int):
        _check_limit_concurrency(limit)
        self.app = app
        self.limit = limit
        self.active = 0  # one event loop: no lock needed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            body = json.dumps({"error": {
                "message": f"server busy: {self.active} requests in flight (limit {self.limit}); retry later",
                "type": "server_error", "param": None, "code": "overloaded"}}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


# ------------------------------------------------------------------------------------------ error answers

#: the request that an app of :func:`create_app` is serving in this context, None outside one
_SERVING: "contextvars.ContextVar[Optional[_Exchange]]" = contextvars.ContextVar("selfextend_serving", default=None)
#: llama-cpp-python's (and LongLlama's) wording of a prompt longer than the context
_CONTEXT_LENGTH = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
#: a filesystem path: two or more /-parts (not in a URL: no ':' or '/' right before it), or C:\\...
_PATH = re.compile(r"""(?<![\w:/.])(?:/[^\s/'"`:;,()<>]+){2,}/?|\b[A-Za-z]:\\[^\s'"`;,()<>]*""")
#: a traceback's ``File "...", line N, in f`` line
_TRACE_LINE = re.compile(r'File "[^"]*", line \d+[^\n]*')
_COMPLETION_PATHS = ("/v1/completions", "/v1/engines/copilot-codex/completions")


def _scrub(message: str) -> str:
    """``message`` without traceback lines or filesystem paths, and encodable as UTF-8 (no lone surrogates)."""
    message = _PATH.sub("<path>", _TRACE_LINE.sub("", message.split("Traceback (most recent call last)")[0]))
    return message.encode("utf-8", "backslashreplace").decode("utf-8").strip()


def _error(message: str, param: Optional[str] = None, code: Optional[str] = None,
           kind: str = "invalid_request_error") -> ErrorResponse:
    """An OpenAI-style error (the ``error`` member of the body), its message scrubbed."""
    return ErrorResponse(message=_scrub(message) or "invalid request", type=kind, param=param, code=code)


def _parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON, or None if it is not JSON."""
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def _request_model(json_body: Any) -> Union[CreateCompletionRequest, CreateChatCompletionRequest, None]:
    """The completion or chat request in ``json_body``, read as llama_cpp's ``RouteErrorHandler`` reads it."""
    if not isinstance(json_body, dict):
        return None
    try:
        if "messages" in json_body:
            return CreateChatCompletionRequest(**json_body)
        if "prompt" in json_body:
            return CreateCompletionRequest(**json_body)
    except Exception:  # noqa: BLE001 - not a valid request: no body to quote
        return None
    return None


def _unwrap(error: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, as anyio's task groups raise them."""
    while isinstance(getattr(error, "exceptions", None), tuple) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _validation_answer(error: RequestValidationError) -> Tuple[int, ErrorResponse]:
    """400 for a body that is not JSON, or does not fit the endpoint's fields (FastAPI's 422)."""
    problems: List[str] = []
    params: List[str] = []
    for e in error.errors():
        loc = [str(part) for part in e.get("loc", ()) if part != "body"]
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "decode error")
            at = f" at character {loc[0]}" if loc else ""
            return 400, _error(f"the request body is not valid JSON: {detail}{at}", code="invalid_json")
        params.append(loc[0] if loc else "body")
        problems.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid value')}")
    return 400, _error("invalid request: " + ("; ".join(problems) or "the body does not fit this endpoint"),
                       param=params[0] if params else None, code="invalid_value")


def _unicode_answer(error: UnicodeError) -> Tuple[int, ErrorResponse]:
    """400 for text that cannot be UTF-8: a lone surrogate escape in the JSON, a body in another encoding."""
    if isinstance(error, UnicodeEncodeError):
        bad = ascii(error.object[error.start:error.end])
        return 400, _error(f"the request holds text that is not valid Unicode: {bad} at character {error.start} "
                           f"({error.reason}); a JSON escape of a UTF-16 surrogate (U+D800 to U+DFFF) must be "
                           "half of a pair.", code="invalid_text")
    if isinstance(error, UnicodeDecodeError):
        serving = _SERVING.get()
        body = serving is not None and error.object == serving.body
        what, hint = (("the request body", "send JSON encoded as UTF-8") if body else
                      ("the text", "token ids that split a multi-byte character do not decode alone"))
        return 400, _error(f"{what} is not valid UTF-8: byte {error.object[error.start:error.start + 1].hex()} at "
                           f"{error.start} ({error.reason}); {hint}.", code="invalid_text")
    return 400, _error(f"invalid text: {error}", code="invalid_text")


def _http_answer(error: HTTPException) -> Tuple[int, ErrorResponse]:
    """The status of an ``HTTPException`` (401 bad API key, 404, 405, ...) with an OpenAI-style body."""
    codes = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}
    kind = "server_error" if error.status_code >= 500 else "invalid_request_error"
    return error.status_code, _error(str(error.detail), code=codes.get(error.status_code), kind=kind)


def error_answer(error: BaseException, body: Any = None) -> Tuple[int, ErrorResponse]:
    """The HTTP status and OpenAI-style error for ``error``, raised serving ``body`` (a parsed request or None).

    What the client sent gets a 4xx: a body that is not JSON or not UTF-8, a field of the
    wrong type, text with a lone surrogate, any ``ValueError`` of the model (a token id outside
    the vocabulary, a prompt longer than ``n_ctx``: ``context_length_exceeded`` as llama_cpp
    words it). Anything else is the server's fault: a 500 with a generic message (exception
    messages can hold paths and internals), and the traceback goes to the log.
    """
    error = _unwrap(error)
    if isinstance(error, RequestValidationError):
        return _validation_answer(error)
    if isinstance(error, HTTPException):
        return _http_answer(error)
    if isinstance(error, json.JSONDecodeError):
        return 400, _error(f"the request body is not valid JSON: {error.msg} (line {error.lineno}, column "
                           f"{error.colno})", code="invalid_json")
    if isinstance(error, UnicodeError):
        return _unicode_answer(error)
    if isinstance(error, ValueError):
        match = _CONTEXT_LENGTH.search(str(error))
        if match and isinstance(body, (CreateCompletionRequest, CreateChatCompletionRequest)):
            return ErrorResponseFormatters.context_length_exceeded(body, match)
        code = "context_length_exceeded" if match else "invalid_value"
        param = "logit_bias" if str(error).startswith("logit_bias") else None
        return 400, _error(str(error) or type(error).__name__, param=param, code=code)
    _LOG.error("internal error while serving a request", exc_info=error)
    return 500, ErrorResponse(message=f"internal server error ({type(error).__name__}); the server log has the details",
                              type="server_error", param=None, code=None)


def _refusal(scope: dict, body: bytes) -> Optional[Tuple[int, ErrorResponse]]:
    """The answer to a request llama_cpp would serve wrongly, else None: a ``prompt`` listing several prompts.

    llama_cpp completes one prompt per request: it asserts that a list holds at most one (a 500,
    or with ``python -O`` an answer to the first prompt only).
    """
    if not scope["path"].rstrip("/").endswith(_COMPLETION_PATHS):
        return None
    json_body = _parse_json(body)
    prompt = json_body.get("prompt") if isinstance(json_body, dict) else None
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        return 400, _error(f"prompt lists {len(prompt)} prompts, but this server completes one prompt per request "
                           "(a string, or a list of one string); send each prompt in its own request.",
                           param="prompt", code="unsupported_value")
    return None


def _is_event_stream(message: dict) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
               for name, value in message.get("headers", ()))


def _is_empty_end(message: dict) -> bool:
    return message["type"] == "http.response.body" and not message.get("body") and not message.get("more_body")


async def _read_body(receive: Callable) -> Tuple[bytes, Callable]:
    """The request body, and a ``receive`` that replays its messages to the app, then passes on later ones."""
    messages: List[dict] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> dict:
        return messages.pop(0) if messages else await receive()

    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request"), replay


class _Exchange:
    """One request's body, and its response on the way out with a streaming reply's start held back."""

    def __init__(self, send: Callable, body: bytes):
        self._send = send
        self.body = body
        self._held: List[dict] = []
        self.started = False  # a http.response.start went out
        self.streaming = False
        self.ended = False  # the last body message went out

    async def send(self, message: dict) -> None:
        """The app's ``send``: an event stream's start waits for its first event (or its error)."""
        if message["type"] == "http.response.start" and _is_event_stream(message):
            self.streaming = True
            self._held.append(message)
        elif self._held and _is_empty_end(message):  # an empty stream: an error may follow
            self._held.append(message)
        else:
            await self.flush()
            await self._out(message)

    async def flush(self) -> None:
        """Send what is held back."""
        while self._held:
            await self._out(self._held.pop(0))

    async def _out(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)

    async def answer(self, status: int, error: ErrorResponse) -> None:
        """Answer with ``status`` and ``{"error": error}``, dropping what is held back."""
        self._held.clear()
        payload = json.dumps({"error": error}).encode()
        await self._out({"type": "http.response.start", "status": status,
                         "headers": [(b"content-type", b"application/json"),
                                     (b"content-length", str(len(payload)).encode())]})
        await self._out({"type": "http.response.body", "body": payload, "more_body": False})

    async def fail(self, error: Exception) -> None:
        """Answer ``error``: a JSON error if nothing was sent, else a last SSE error event; else re-raise."""
        status, answer = error_answer(error, _request_model(_parse_json(self.body)))
        if not self.started:
            await self.answer(status, answer)
        elif self.streaming and not self.ended:
            event = b"data: " + json.dumps({"error": answer}).encode() + b"\n\n"
            await self._out({"type": "http.response.body", "body": event, "more_body": True})
            await self._out({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            raise error


class OpenAIErrors:
    """ASGI middleware: the error answers of an app of :func:`create_app` (see :func:`error_answer`).

    - A streaming reply's ``http.response.start`` is held back until its first event. llama_cpp
      starts the stream (200) before the model runs, so a prompt longer than ``n_ctx`` or a
      ``logit_bias`` id outside the vocabulary ended as an empty 200 stream; it now gets the
      same 400 as without streaming. An error after the first event ends the stream with a
      ``data: {"error": {...}}`` event.
    - Exceptions that escape the routes (a body that is not JSON or not UTF-8 makes llama_cpp's
      own error handler fail) are answered here, not with Starlette's plain-text 500.
    - A completion ``prompt`` listing several prompts is refused (see :func:`_refusal`).
    """

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, receive = await _read_body(receive)
        exchange = _Exchange(send, body)
        token = _SERVING.set(exchange)
        try:
            refusal = _refusal(scope, body)
            if refusal is not None:
                await exchange.answer(*refusal)
                return
            await self.app(scope, receive, exchange.send)
            await exchange.flush()
        except Exception as error:  # noqa: BLE001 - every error gets an answer; 500s are logged
            await exchange.fail(error)
        finally:
            _SERVING.reset(token)


def _route_error_answer(original: Callable[..., Tuple[int, ErrorResponse]], error: Exception,
                        body: Any = None) -> Tuple[int, ErrorResponse]:
    """A route's ``error_message_wrapper``: :func:`error_answer` in an app of :func:`create_app`, else llama_cpp's."""
    if _SERVING.get() is None:
        return original(error=error, body=body)
    return error_answer(error, body)


def _answer_route_errors(app: Any) -> None:
    """Send the errors that llama_cpp's routes catch themselves through :func:`error_answer`.

    llama_cpp's ``RouteErrorHandler`` answers any exception of a route (a validation error, a
    ``ValueError`` of the model) with a 500 whose message is ``str(error)``, which can hold a
    traceback with server paths. Its method ``error_message_wrapper`` picks the status and
    body; each route gets one that defers to :func:`error_answer` while an app of
    :func:`create_app` serves the request. The routes are module globals of llama_cpp, shared
    by every app in the process; an app made by llama_cpp's own ``create_app`` keeps its answers.
    """
    for route in [*_app_module.router.routes, *app.router.routes]:
        if isinstance(route, RouteErrorHandler) and "error_message_wrapper" not in vars(route):
            route.error_message_wrapper = functools.partial(_route_error_answer, route.error_message_wrapper)


async def _exception_answer(request: Any, error: Exception) -> JSONResponse:
    """Exception handler of the app: HTTP errors (401, 404, 405, ...), validation errors outside llama_cpp's routes."""
    status, answer = error_answer(error)
    return JSONResponse({"error": answer}, status_code=status, headers=getattr(error, "headers", None))


def _add_error_answers(app: Any) -> None:
    """Make every error answer of ``app`` OpenAI-style and free of paths (see :func:`error_answer`)."""
    # innermost middleware (user_middleware[0] is the outermost): inside llama_cpp's CORS middleware,
    # so that its error answers get the CORS headers too
    app.user_middleware.append(Middleware(OpenAIErrors))
    for kind in (HTTPException, RequestValidationError):
        app.add_exception_handler(kind, _exception_answer)
    _answer_route_errors(app)


def create_app(
    model: Optional[str] = None,
    *,
    model_settings: Optional[LongModelSettings] = None,
    server_settings: Optional[ServerSettings] = None,
    limit_concurrency: Optional[int] = None,
    **settings: Any,
):
    """llama-cpp-python's FastAPI app serving a :class:`LongLlama`.

    Pass either ``model`` (a GGUF path) with ``ModelSettings``/``LongModelSettings`` fields as
    keyword arguments (``n_ctx``, ``group_size``, ``window``, ``mode``, ``n_threads``, ...), or
    a ready ``model_settings``. The model is loaded before this returns.
    ``limit_concurrency`` answers requests beyond that many in flight with a JSON 503
    (:class:`ConcurrencyLimit`); by default they all queue.

    Raises:
        TypeError: a keyword that is no ``LongModelSettings`` field (the message names the
            closest one), or not exactly one of ``model`` and ``model_settings``.
        SelfExtendConfigError: ``limit_concurrency`` below 1; settings that :class:`LongLlama`
            refuses. Both are checked before the model is loaded.
    """
    _check_limit_concurrency(limit_concurrency)
    if model_settings is None:
        if model is None:
            raise TypeError("create_app needs model (a GGUF path) or model_settings")
        _check_setting_names(settings)
        model_settings = LongModelSettings(model=model, **settings)
    elif model is not None or settings:
        raise TypeError("pass either model and settings, or model_settings, not both")
    server_settings = server_settings or ServerSettings()
    original = _app_module.LlamaProxy
    _app_module.LlamaProxy = LongLlamaProxy  # create_app -> set_llama_proxy builds its proxy from this name
    try:
        app = _app_module.create_app(server_settings=server_settings, model_settings=[model_settings])
    finally:
        _app_module.LlamaProxy = original
    _add_error_answers(app)
    if limit_concurrency is not None:
        app.add_middleware(ConcurrencyLimit, limit=limit_concurrency)
    return app


def loaded_model() -> LongLlama:
    """The :class:`LongLlama` that the app made by :func:`create_app` serves."""
    proxy = _app_module._llama_proxy  # the module-level proxy that create_app installed
    if proxy is None:
        raise RuntimeError("no app: call create_app first")
    return proxy()
