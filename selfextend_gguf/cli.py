"""The ``selfextend-gguf`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from typing import List, Optional

from .params import MODES


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="GGUF model path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="self-extend mode (default: exact, or shift where exact mode refuses the model; "
                        "demo: both, one after the other)")
    p.add_argument("--group-size", "-G", type=int, default=None, help="group size G (default: automatic)")
    p.add_argument("--window", "-W", type=int, default=None, help="neighbour window W (default: automatic)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    add_rpc_argument(p)


def add_rpc_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", default=None, metavar="HOST:PORT,...",
                   help="put the model's layers on these rpc-server processes (selfextend-gguf rpc-server); "
                        "unauthenticated and unencrypted: trusted networks only")


def _run_passkey(llm, prompt, max_tokens: int = 8) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = llm.create_completion(prompt.text, max_tokens=max_tokens, temperature=0.0, top_k=1)
    return out["choices"][0]["text"], time.perf_counter() - t0


#: the demo's prompt, in trained lengths: at 1.25x SmolLM2's stock model still found the key (and shift
#: mode did not), at 1.5x it babbles while both modes find it
DEMO_LENGTH = 1.5


def cmd_demo(args: argparse.Namespace) -> int:
    """Passkey retrieval at 1.5x the trained context: the stock library, then self-extend's shift
    mode and exact mode (the paper's method) on the same prompt, each with its answer and time."""
    from . import LongLlama, default_model_path
    from ._native import load_llama_cpp
    from .gguf_info import read_model_info
    from .passkey import found, prompt_for_tokens, random_key
    from .progress import PromptProgressBar
    from .rpc import RpcLlama

    model = args.model or str(default_model_path())
    info = read_model_info(model)
    n_tokens = args.tokens or int(info.n_ctx_train * DEMO_LENGTH)
    key = random_key(random.Random(args.seed))

    print(f"model: {model}\n  {info.arch}, trained on {info.n_ctx_train} tokens")
    vocab = load_llama_cpp().Llama(model_path=model, vocab_only=True, verbose=False)
    prompt = prompt_for_tokens(n_tokens, args.depth, key, lambda s: vocab.tokenize(s.encode(), add_bos=True))
    n_prompt = len(vocab.tokenize(prompt.text.encode(), add_bos=True))
    vocab.close()
    # the instructions alone can be longer than a small --tokens: the context is sized for the prompt made
    common = dict(n_ctx=max(n_tokens, n_prompt) + 64, n_batch=512, n_threads=args.threads, rpc_servers=args.rpc,
                  flash_attn=args.flash_attn == "on", verbose=False)
    stock = RpcLlama(model, **common)
    print(f"prompt: {n_prompt} tokens ({n_prompt / info.n_ctx_train:.2f}x the trained length), "
          f"pass key {key} at depth {args.depth:.0%}\n")
    rows = []
    answer, secs = _run_passkey(stock, prompt)
    rows.append(("stock llama.cpp", "-", answer, found(answer, key), secs))
    stock.close()
    for mode in [args.mode] if args.mode else ["shift", "exact"]:
        llm = LongLlama(model, mode=mode, group_size=args.group_size, window=args.window, **common,
                        progress_callback=PromptProgressBar(desc=f"{mode} mode prompt"))
        p = llm.self_extend
        answer, secs = _run_passkey(llm, prompt)
        rows.append((f"self-extend, {mode} mode", f"G={p.group_size} W={p.window}", answer, found(answer, key), secs))
        llm.close()

    print("| method | setting | answer | found | seconds |\n|---|---|---|---|---|")
    for name, setting, ans, ok, s in rows:
        answer = repr(ans.strip()).replace("|", "\\|")  # a '|' in the answer would split its cell
        print(f"| {name} | {setting} | {answer} | {'yes' if ok else 'no'} | {s:.1f} |")
    print("\nexact mode is the paper's method; shift mode approximates it with llama.cpp's KV shift "
          "(see README, 'The two modes').")
    return 0


def cmd_rpc_server(args: argparse.Namespace) -> int:
    """Run llama.cpp's rpc-server, which lends this machine's devices to models loaded elsewhere (--rpc)."""
    import subprocess

    from .rpc import server_program

    command = [str(server_program()), "--host", args.host, "--port", str(args.port)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.cache:
        command.append("--cache")
    if args.host != "127.0.0.1":
        print(f"selfextend-gguf: rpc-server on {args.host}:{args.port} accepts anyone who can reach that address: "
              "llama.cpp's RPC protocol has no authentication or encryption", file=sys.stderr)
    if os.name == "posix":  # become the server: signals (a test's terminate, Ctrl-C) reach it directly
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfextend-gguf", description="SelfExtend for GGUF models in llama.cpp")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the parameter choice and more")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    _add_model_args(demo)
    demo.add_argument("--tokens", type=int, default=None, help="prompt length (default: 1.5x the trained length)")
    demo.add_argument("--flash-attn", choices=("on", "off"), default="on",
                      help="llama.cpp's flash attention for all three (default: %(default)s, as llama.cpp's tools)")
    demo.add_argument("--depth", type=float, default=0.5, help="where the key is hidden, 0..1 (default: 0.5)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the random pass key")
    demo.set_defaults(func=cmd_demo)

    from . import chat, server_cli

    serve = sub.add_parser("serve", help=server_cli.cmd_serve.__doc__)
    _add_model_args(serve)
    server_cli.add_arguments(serve)
    serve.set_defaults(func=server_cli.cmd_serve)
    chat_parser = sub.add_parser("chat", help=chat.cmd_chat.__doc__)
    _add_model_args(chat_parser)
    chat.add_arguments(chat_parser)
    chat_parser.set_defaults(func=chat.cmd_chat)

    rpc_server = sub.add_parser("rpc-server", help=cmd_rpc_server.__doc__)
    rpc_server.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 opens it "
                                 "to every network the machine is on, with no authentication)")
    rpc_server.add_argument("--port", type=int, default=50052, help="TCP port (default: %(default)s)")
    rpc_server.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's)")
    rpc_server.add_argument("--cache", action="store_true",
                            help="cache received tensors on disk, so that a client loading the same model again "
                                 "sends less (rpc-server's -c)")
    rpc_server.set_defaults(func=cmd_rpc_server)

    from .evaluate.commands import add_subcommands

    add_subcommands(sub)  # passkey, perplexity, bench
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .errors import SelfExtendError

    try:
        return args.func(args)
    except SelfExtendError as e:
        print(f"selfextend-gguf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
