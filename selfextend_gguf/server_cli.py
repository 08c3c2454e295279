"""The ``selfextend-gguf serve`` command: its options, and running the app of :mod:`selfextend_gguf.server`.

Kept apart from :mod:`selfextend_gguf.server` so that the command line can list ``serve``
without the server's optional dependencies installed.
"""

from __future__ import annotations

import argparse
import sys


def _concurrency_limit(text: str) -> int:
    """``--limit-concurrency``'s value: a whole number >= 1 (0 or less would refuse every request)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (the most requests in flight at once), got {value}; "
                                         "leave the option out to let all requests queue")
    return value


#: --cache-type-k/-v: ggml type ids (ggml.h) of the KV cache types that llama.cpp's server also offers
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``selfextend-gguf serve`` beyond the model options every command shares."""
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context size in tokens (default: twice the model's trained length)")
    p.add_argument("--n-batch", type=int, default=512, help="prompt batch size (default: %(default)s)")
    p.add_argument("--n-ubatch", type=int, default=None,
                   help="physical batch size (default: 512, at most --n-batch; exact mode: 128 or less)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to the GPU, -1 for all")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default: %(default)s)")
    p.add_argument("--model-alias", default=None, help="model name reported by /v1/models (default: the path)")
    p.add_argument("--chat-format", default=None, help="chat format (default: the GGUF's chat template)")
    p.add_argument("--logits-all", action="store_true",
                   help="keep logits of every token, needed for logprobs (costs n_ctx x n_vocab floats)")
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--limit-concurrency", type=_concurrency_limit, default=None,
                   help="answer requests beyond this many in flight with a JSON 503 (default: all queue)")
    p.add_argument("--cache-type-k", choices=sorted(CACHE_TYPES), default="f16",
                   help="type of the cached keys (default: %(default)s); exact mode re-rotates a key in place "
                        "once, so with f16 or a quantized type its answers can differ in the last bits after "
                        "prefix reuse, f32 makes them independent of the cache's history")
    p.add_argument("--cache-type-v", choices=sorted(CACHE_TYPES), default="f16",
                   help="type of the cached values (default: %(default)s; quantized needs flash attention in llama.cpp)")
    p.add_argument("--interrupt", action="store_true",
                   help="cut a streaming reply short when another request arrives (llama_cpp.server's default; "
                        "the cut stream ends without closing its HTTP chunks). Default: replies finish, others wait")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the OpenAI-compatible API (completions, chat, streaming) with self-extend on."""
    from .server import LongModelSettings, ServerSettings, create_app, loaded_model  # first: checks the extra

    import uvicorn

    from .gguf_info import read_model_info
    from .models import default_model_path

    model = args.model or str(default_model_path())
    info = read_model_info(model)
    n_ctx = args.n_ctx or 2 * info.n_ctx_train
    settings = LongModelSettings(
        model=model, model_alias=args.model_alias, n_ctx=n_ctx, n_batch=args.n_batch,
        n_ubatch=args.n_ubatch, n_threads=args.threads, n_threads_batch=args.threads,
        n_gpu_layers=args.n_gpu_layers, chat_format=args.chat_format, logits_all=args.logits_all,
        group_size=args.group_size, window=args.window, mode=args.mode,
        rpc_servers=args.rpc.split(",") if args.rpc else None,
        type_k=CACHE_TYPES[args.cache_type_k], type_v=CACHE_TYPES[args.cache_type_v],
        verbose=args.verbose)
    server = ServerSettings(host=args.host, port=args.port, api_key=args.api_key,
                            interrupt_requests=args.interrupt)
    app = create_app(model_settings=settings, server_settings=server, limit_concurrency=args.limit_concurrency)
    p = loaded_model().self_extend
    print(f"selfextend-gguf: serving {model} ({info.arch}, trained on {info.n_ctx_train} tokens) with n_ctx={n_ctx}, "
          f"self-extend {p.mode} G={p.group_size} W={p.window} (reach {p.reach}) "
          f"on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0
