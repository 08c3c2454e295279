"""`selfextend-gguf serve` through a real HTTP client on loopback: a subprocess server on a tiny model.

Replies are greedy, so each must equal what an in-process LongLlama with the same settings
gives (prompts 2-3x past the trained context of 64), also under 50 concurrent requests.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install '.[server]'")

from selfextend_gguf import LongLlama  # noqa: E402

# the child imports selfextend_gguf as the tests do (the installed package, or PYTHONPATH), never the
# checkout's source tree that `python -m` would put first from a cwd at the repository root
_OUTSIDE_CHECKOUT = os.path.dirname(sys.executable)
G, W, N_CTX, N_BATCH = 4, 16, 200, 32
ASCII_ONLY = {str(i): -1e9 for i in range(3 + 0x80, 3 + 0x100)}  # random weights: keep replies ASCII
PROMPTS = [("the quick brown fox jumps over the lazy dog. " * 4)[: 110 + 9 * i] for i in range(5)]
MESSAGES = [{"role": "system", "content": PROMPTS[0][:70]}, {"role": "user", "content": PROMPTS[1][:60]}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `selfextend-gguf serve` subprocess and a minimal HTTP client for it."""

    def __init__(self, model: Path, mode: str, *extra: str):
        self.port = _free_port()
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "selfextend_gguf.cli", "serve", "--model", str(model), "--mode", mode,
               "-G", str(G), "-W", str(W), "--n-ctx", str(N_CTX), "--n-batch", str(N_BATCH), "--threads", "1",
               "--host", "127.0.0.1", "--port", str(self.port), "--cache-type-k", "f32", "--cache-type-v", "f32",
               *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=_OUTSIDE_CHECKOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if self.get("/v1/models")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("server did not answer within 90 s")

    def request(self, method: str, path: str, body=None):
        """(status, parsed JSON body | list of SSE data payloads)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read().decode()
            if resp.getheader("content-type", "").startswith("text/event-stream"):
                events = [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
                return resp.status, [e if e == "[DONE]" else json.loads(e) for e in events]
            return resp.status, json.loads(raw)
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc``, and SIGKILL it if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _completion(prompt: str, **kw) -> dict:
    return dict(prompt=prompt, max_tokens=12, temperature=0.0, repeat_penalty=1.0, logit_bias=ASCII_ONLY, **kw)


def _chat(**kw) -> dict:
    return dict(messages=MESSAGES, max_tokens=12, temperature=0.0, repeat_penalty=1.0, logit_bias=ASCII_ONLY, **kw)


@pytest.fixture(scope="module", params=["shift", "exact"])
def served(request, tiny_chat_path):
    """(server, expected replies from an in-process LongLlama with the same settings)."""
    mode = request.param
    # F32 caches: exact mode re-rotates a key in place when it leaves the window (and back after prefix
    # reuse cuts the sequence), so with an F16 cache the last bits depend on the order of the requests
    llm = LongLlama(str(tiny_chat_path), group_size=G, window=W, mode=mode, n_ctx=N_CTX, n_batch=N_BATCH,
                    n_ubatch=N_BATCH, n_threads=1, n_threads_batch=1, type_k=0, type_v=0, verbose=False)
    bias = {int(k): v for k, v in ASCII_ONLY.items()}
    expected = {p: llm.create_completion(p, max_tokens=12, temperature=0.0, logit_bias=bias)["choices"][0]["text"]
                for p in PROMPTS}
    expected["chat"] = llm.create_chat_completion(MESSAGES, max_tokens=12, temperature=0.0,
                                                  logit_bias=bias)["choices"][0]["message"]["content"]
    assert len(llm.tokenize(PROMPTS[0].encode())) > 64
    llm.close()
    server = Server(tiny_chat_path, mode)
    yield server, expected
    server.stop()


def _streamed_text(events) -> str:
    assert events[-1] == "[DONE]"
    out = []
    for e in events[:-1]:
        choice = e["choices"][0]
        out.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(out)


def test_models_lists_the_model(served, tiny_chat_path):
    server, _ = served
    status, body = server.get("/v1/models")
    assert status == 200 and body["data"][0]["id"] == str(tiny_chat_path)


def test_completion_and_streaming(served):
    server, expected = served
    for prompt in PROMPTS[:2]:
        status, body = server.post("/v1/completions", _completion(prompt))
        assert status == 200, body
        assert body["choices"][0]["text"] == expected[prompt]
        assert body["usage"]["prompt_tokens"] > 64
        status, events = server.post("/v1/completions", _completion(prompt, stream=True))
        assert status == 200 and _streamed_text(events) == expected[prompt]


def test_chat_and_streaming(served):
    server, expected = served
    status, body = server.post("/v1/chat/completions", _chat())
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == expected["chat"]
    status, events = server.post("/v1/chat/completions", _chat(stream=True))
    assert status == 200 and _streamed_text(events) == expected["chat"]


def test_prompt_too_long_is_a_clean_400(served):
    server, expected = served
    status, body = server.post("/v1/completions", _completion("ab " * 150))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert f"maximum context length is {N_CTX} tokens" in body["error"]["message"], body
    status, body = server.post("/v1/completions", _completion(PROMPTS[0]))
    assert status == 200 and body["choices"][0]["text"] == expected[PROMPTS[0]]


def _fire(server: Server, i: int):
    """Request i of a burst: completions, chat and streaming of both, in turn."""
    prompt = PROMPTS[i % len(PROMPTS)]
    kind = i % 4
    if kind == 0:
        return i, "completion", prompt, *server.post("/v1/completions", _completion(prompt))
    if kind == 1:
        return i, "chat", "chat", *server.post("/v1/chat/completions", _chat())
    if kind == 2:
        return i, "stream", prompt, *server.post("/v1/completions", _completion(prompt, stream=True))
    return i, "chat-stream", "chat", *server.post("/v1/chat/completions", _chat(stream=True))


def _check_burst(server: Server, expected: dict, n: int = 50) -> dict:
    """Send n requests at once; each must be answered correctly or refused with a JSON 503."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda i: _fire(server, i), range(n)))
    assert sorted(r[0] for r in results) == list(range(n))  # nothing lost
    counts = {"ok": 0, "refused": 0}
    for i, kind, key, status, body in results:
        if status == 503:
            assert body["error"]["code"] == "overloaded" and "retry" in body["error"]["message"], body
            counts["refused"] += 1
            continue
        assert status == 200, (i, kind, status, body)
        counts["ok"] += 1
        if kind == "completion":
            assert body["choices"][0]["text"] == expected[key]
        elif kind == "chat":
            assert body["choices"][0]["message"]["content"] == expected[key]
        else:  # streams are not interrupted by waiting requests (serve's default, unlike llama_cpp.server's)
            assert _streamed_text(body) == expected[key], (i, kind, body)
    assert server.proc.poll() is None, "the server died"
    status, body = server.post("/v1/completions", _completion(PROMPTS[3]))
    assert status == 200 and body["choices"][0]["text"] == expected[PROMPTS[3]]
    return counts


def test_fifty_concurrent_requests(served):
    """All 50 answered (the app queues them on its model lock), correct, and the server still up."""
    server, expected = served
    counts = _check_burst(server, expected)
    assert counts == {"ok": 50, "refused": 0}


def test_limit_concurrency_refuses_cleanly(tiny_chat_path, served):
    """With --limit-concurrency 3 a burst of 50 gets correct answers and JSON 503s, nothing else."""
    _, expected = served
    mode = "exact" if "exact" in served[0].proc.args else "shift"
    server = Server(tiny_chat_path, mode, "--limit-concurrency", "3")
    try:
        counts = _check_burst(server, expected)
    finally:
        server.stop()
    assert counts["ok"] + counts["refused"] == 50 and counts["ok"] >= 3 and counts["refused"] >= 1, counts
