"""`selfextend-gguf chat` driven through a pseudo-terminal (stdlib pty), on a tiny model with a chat template.

Greedy replies must equal an in-process LongLlama's create_chat_completion(stream=True) for the
same history, so history keeping, /reset and the context report are checked, not just printed.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from selfextend_gguf import LongLlama

# the child imports selfextend_gguf as the tests do (the installed package, or PYTHONPATH), never the
# checkout's source tree that `python -m` would put first from a cwd at the repository root
_OUTSIDE_CHECKOUT = os.path.dirname(sys.executable)
G, W, N_CTX, N_BATCH, MAX_TOKENS = 4, 16, 200, 32, 8
SYSTEM = "you answer in short words about the quick brown fox and its dog."
STATUS = re.compile(rb"\r\n\[(\d+) of (\d+) tokens in context, [\d.]+ s\]\r\n")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


class Terminal:
    """`selfextend-gguf chat` on the slave side of a pty; we type and read on the master side."""

    def __init__(self, model: Path, *extra: str):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100x24 terminal
        env = {**os.environ, "PYTHONIOENCODING": "utf-8", "TERM": "dumb"}
        cmd = [sys.executable, "-m", "selfextend_gguf.cli", "chat", "--model", str(model), "--mode", extra[0],
               "-G", str(G), "-W", str(W), "--n-ctx", str(N_CTX), "--n-batch", str(N_BATCH), "--threads", "1",
               "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--system", SYSTEM, *extra[1:]]
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     cwd=_OUTSIDE_CHECKOUT)
        os.close(slave)
        self.fd = master
        self.seen = b""

    def read_until(self, marker: bytes, timeout: float = 60) -> bytes:
        """Everything read since the last call, up to and including ``marker``."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                raise AssertionError(f"no {marker!r} (exit {self.proc.poll()}); got:\n{self.seen.decode(errors='replace')}")
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    pass
        end = self.seen.index(marker) + len(marker)
        out, self.seen = self.seen[:end], self.seen[end:]
        return out

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def turn(self, text: str) -> tuple[str, int]:
        """Type a message; return the streamed reply as the terminal shows it and the context count."""
        self.type(text + "\n")
        out = self.read_until(b"you> ")
        m = STATUS.search(out)
        assert m, out
        reply = out[: m.start()].split(b"assistant> ", 1)[1]
        return reply.decode("utf-8"), int(m.group(1))

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.fd)


def _expected(model: Path, mode: str, turns: list[str]) -> list[tuple[str, int]]:
    """Replies and context counts of an in-process LongLlama, as the terminal shows them (\\n -> \\r\\n)."""
    llm = LongLlama(str(model), group_size=G, window=W, mode=mode, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=1,
                    n_threads_batch=1, verbose=False)
    history = [{"role": "system", "content": SYSTEM}]
    out = []
    for text in turns:
        history.append({"role": "user", "content": text})
        chunks = llm.create_chat_completion(history, stream=True, max_tokens=MAX_TOKENS, temperature=0.0)
        reply = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        history.append({"role": "assistant", "content": reply})
        out.append((reply.replace("\n", "\r\n"), llm.n_tokens))
    llm.close()
    return out


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_chat_keeps_history_resets_and_ends_on_eof(tiny_chat_path, mode):
    turns = ["where is the fox?", "and the dog now?"]
    (first, n1), (second, n2) = _expected(tiny_chat_path, mode, turns)
    assert n1 > 64  # the conversation is past the trained context from the first turn
    term = Terminal(tiny_chat_path, mode)
    banner = term.read_until(b"you> ")
    assert b"trained on 64 tokens" in banner and f"G={G} W={W}".encode() in banner and b"/reset" in banner
    assert term.turn(turns[0]) == (first, n1)
    assert term.turn(turns[1]) == (second, n2)  # answered with the first turn in its history
    term.type("/reset\n")
    assert b"[conversation reset]" in term.read_until(b"you> ")
    assert term.turn(turns[0]) == (first, n1)  # the history is gone
    term.type("\x04")  # Ctrl-D: end of input
    assert term.close() == 0


def test_chat_exit_command_and_progress_bar(tiny_chat_path):
    """/exit quits; with --progress-min 10 the prompt shows a tqdm bar before the reply starts."""
    (first, n1), = _expected(tiny_chat_path, "shift", ["where is the fox?"])
    term = Terminal(tiny_chat_path, "shift", "--progress-min", "10")
    term.read_until(b"you> ")
    term.type("where is the fox?\n")
    out = term.read_until(b"you> ")
    before, _, after = out.partition(b"assistant> ")
    assert re.search(rb"prompt:\s+\d+%", before) and b"tok" in before, out
    assert after.startswith(first.encode()) and f"[{n1} of ".encode() in after
    term.type("/exit\n")
    assert term.close() == 0
