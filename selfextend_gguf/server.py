"""``selfextend-gguf serve``: llama-cpp-python's OpenAI-compatible server with a :class:`LongLlama` behind it.

The app is llama-cpp-python's own (``llama_cpp.server.app.create_app``): the same routes
(``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, streaming over SSE, ...), the
same request locking and error responses. Only the model differs. ``create_app`` builds its
model through ``llama_cpp.server.model.LlamaProxy``, whose
``load_llama_from_model_settings`` constructs a ``llama_cpp.Llama``; :func:`create_app`
here hands it :class:`LongLlamaProxy`, which constructs a :class:`LongLlama` from
:class:`LongModelSettings` (``ModelSettings`` plus ``group_size``, ``window``, ``mode``).
Nothing in llama_cpp is modified: the proxy class is swapped only while ``create_app`` runs.

Needs the ``server`` extra: ``pip install 'selfextend-gguf[server]'`` (fastapi, uvicorn,
sse-starlette, starlette-context, pydantic-settings). Importing this module checks for them.

    from selfextend_gguf.server import create_app
    app = create_app("model.gguf", n_ctx=32768, group_size=4, window=1024, mode="exact")
    # then: uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

from .errors import MissingExtraError, SelfExtendConfigError
from .long_llama import DEFAULT_MODE, LongLlama, llama_cpp

try:
    import uvicorn  # noqa: F401  (not used here: checked so that `serve` fails early and clearly)
    from llama_cpp.server import app as _app_module
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings, ServerSettings
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(
        f"the server needs llama-cpp-python's server dependencies ({e.name} is missing). "
        "Install them with: pip install 'selfextend-gguf[server]'") from e

#: ModelSettings fields that need more than passing through, and are not supported behind a LongLlama
_UNSUPPORTED = ("clip_model_path", "hf_pretrained_model_name_or_path", "hf_tokenizer_config_path", "draft_model",
                "chat_template_kwargs")


class LongModelSettings(ModelSettings):
    """llama-cpp-python's ``ModelSettings`` plus the self-extend setting of :class:`LongLlama`."""

    group_size: Optional[int] = None
    window: Optional[int] = None
    mode: str = DEFAULT_MODE


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
        for name in ("group_size", "window", "mode"):
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


class ConcurrencyLimit:
    """ASGI middleware: refuse HTTP requests beyond ``limit`` in flight with a JSON 503.

    The app runs one request on the model at a time and queues the rest; this bounds
    the queue. A streaming request counts until its last event is sent. The refusal
    has an OpenAI-style error body and ``Retry-After``, so clients can back off.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int):
        if limit < 1:
            raise SelfExtendConfigError(f"limit_concurrency must be >= 1, got {limit}")
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
    """
    if model_settings is None:
        if model is None:
            raise TypeError("create_app needs model (a GGUF path) or model_settings")
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
    if limit_concurrency is not None:
        app.add_middleware(ConcurrencyLimit, limit=limit_concurrency)
    return app


def loaded_model() -> LongLlama:
    """The :class:`LongLlama` that the app made by :func:`create_app` serves."""
    proxy = _app_module._llama_proxy  # the module-level proxy that create_app installed
    if proxy is None:
        raise RuntimeError("no app: call create_app first")
    return proxy()
