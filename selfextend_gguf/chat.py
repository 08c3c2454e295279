"""``selfextend-gguf chat``: an interactive terminal chat with a :class:`LongLlama`.

Replies stream as they are generated, formatted with the model's own chat template
(``create_chat_completion(stream=True)``); the whole conversation is kept, so it can
grow past the model's trained context. ``/reset`` forgets it, ``/exit`` or end of input
(Ctrl-D) quits, Ctrl-C stops a reply. After each reply a status line says how many
tokens the conversation holds out of ``n_ctx``; long prompts show a progress bar.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Dict, List, Optional

from .errors import ContextLengthError
from .progress import PromptProgressBar

HELP = "/reset forgets the conversation, /exit or Ctrl-D quits, Ctrl-C stops a reply"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``selfextend-gguf chat`` beyond the model options every command shares."""
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context size in tokens (default: twice the model's trained length)")
    p.add_argument("--n-batch", type=int, default=512, help="prompt batch size (default: %(default)s)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to the GPU, -1 for all")
    p.add_argument("--chat-format", default=None, help="chat format (default: the GGUF's chat template)")
    p.add_argument("--system", default=None, help="a system message that starts the conversation")
    p.add_argument("--max-tokens", type=int, default=512, help="longest reply in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 for greedy")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--progress-min", type=int, default=512,
                   help="show a progress bar for prompts with at least this many new tokens (default: %(default)s)")


class Chat:
    """A conversation with a LongLlama: history, streaming replies, and the slash commands."""

    def __init__(self, llm, *, system: Optional[str] = None, max_tokens: int = 512, temperature: float = 0.7,
                 seed: Optional[int] = None, out: IO[str] = sys.stdout):
        self.llm = llm
        self.start: List[Dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.history: List[Dict[str, str]] = list(self.start)
        self.sampling = dict(max_tokens=max_tokens, temperature=temperature, **({"seed": seed} if seed is not None else {}))
        self.out = out

    def reset(self) -> None:
        """Forget the conversation (the system message stays) and the cached tokens."""
        self.history = list(self.start)
        self.llm.reset()

    def reply(self, text: str) -> str:
        """Send the user's ``text``, stream the answer to ``out``, and keep both in the history.

        ``assistant> `` is written with the first chunk, i.e. once the prompt is evaluated,
        so that a progress bar (on stderr) is gone before the reply starts.
        """
        self.history.append({"role": "user", "content": text})
        parts: List[str] = []
        t0 = time.perf_counter()
        try:
            for i, chunk in enumerate(self.llm.create_chat_completion(self.history, stream=True, **self.sampling)):
                if i == 0:
                    self.out.write("assistant> ")
                piece = chunk["choices"][0]["delta"].get("content") or ""
                parts.append(piece)
                self.out.write(piece)
                self.out.flush()
        except ContextLengthError as e:
            self.history.pop()
            self.out.write(f"\n[the conversation no longer fits: {e}\n /reset to start over.]\n")
            return ""
        except KeyboardInterrupt:
            self.llm.reset()  # a decode may have been cut off: evaluate the history afresh next time
            self.out.write(" [stopped]")
        answer = "".join(parts)
        self.history.append({"role": "assistant", "content": answer})
        secs = time.perf_counter() - t0
        self.out.write(f"\n[{self.llm.n_tokens} of {self.llm.n_ctx()} tokens in context, {secs:.1f} s]\n")
        self.out.flush()
        return answer

    def run(self, read=input) -> int:
        """The loop: read a line, handle commands, reply. Returns the exit status."""
        while True:
            try:
                line = read("you> ")
            except EOFError:
                self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                self.out.write("\n")
                return 130
            command = line.strip()
            if not command:
                continue
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                self.reset()
                self.out.write("[conversation reset]\n")
                continue
            if command.startswith("/") and command.split()[0] in ("/help", "/?"):
                self.out.write(f"[{HELP}]\n")
                continue
            self.reply(line)


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with the model in the terminal (streaming, the model's chat template, long history)."""
    from . import LongLlama, default_model_path
    from .gguf_info import read_model_info

    model = args.model or str(default_model_path())
    info = read_model_info(model)
    n_ctx = args.n_ctx or 2 * info.n_ctx_train
    bar = PromptProgressBar(args.progress_min)
    llm = LongLlama(model, group_size=args.group_size, window=args.window, mode=args.mode,
                    n_ctx=n_ctx, n_batch=args.n_batch, n_threads=args.threads, n_threads_batch=args.threads,
                    n_gpu_layers=args.n_gpu_layers, chat_format=args.chat_format, progress_callback=bar,
                    rpc_servers=args.rpc,
                    verbose=args.verbose)
    p = llm.self_extend
    print(f"{info.name or model}: {info.arch}, trained on {info.n_ctx_train} tokens; n_ctx={llm.n_ctx()}, "
          f"self-extend {p.mode} G={p.group_size} W={p.window} (reach {p.reach}); chat format {llm.chat_format}\n"
          f"[{HELP}]", flush=True)
    try:
        return Chat(llm, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                    seed=args.seed).run()
    finally:
        bar.close()
        llm.close()
