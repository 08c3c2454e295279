"""Bad requests and bad settings against `selfextend-gguf serve`: clean 4xx answers, no crash, no leak.

One server (a subprocess on the tiny chat model, loopback only) takes every fault in turn: each
must get a 4xx with an OpenAI-style body (``{"error": {"message", "type", "param", "code"}}``)
whose message holds no traceback and no server path, streaming requests included. Afterwards
the server must still be up and answer greedy requests exactly as an in-process LongLlama does.
Settings that cannot work (``limit_concurrency`` below 1, a misspelled keyword) are refused
before the model is loaded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, List, Tuple

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install '.[server]'")

from selfextend_gguf import LongLlama  # noqa: E402
from selfextend_gguf.errors import InvalidTokenError, SelfExtendConfigError  # noqa: E402
from test_server import (  # noqa: E402
    ASCII_ONLY, G, MESSAGES, N_BATCH, N_CTX, PROMPTS, W, _OUTSIDE_CHECKOUT, Server, _chat, _completion,
    _free_port, _streamed_text, _terminate,
)

MODE = "shift"
TOO_LONG = "ab " * 150  # about 450 tokens, n_ctx is 200
#: a server path or a traceback in an error message
LEAK = re.compile(r"/\S*(site-packages|\.py\b)|Traceback|File \"")


class DrainedServer(Server):
    """A :class:`Server` whose output is read as it comes, so that its log cannot fill the pipe and block it."""

    def __init__(self, *args: str):
        self.lines: List[str] = []
        self._reader = None
        super().__init__(*args)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> str:
        if self._reader is None:
            return super().stop()
        _terminate(self.proc, timeout=30)
        self._reader.join(timeout=10)
        return "".join(self.lines)

    def send(self, path: str, body: bytes, content_type: str = "application/json") -> Tuple[int, str, Any]:
        """POST raw bytes: (status, content type, parsed JSON | SSE data payloads | text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            raw = resp.read().decode("utf-8", "replace")
            kind = resp.getheader("content-type", "")
        finally:
            conn.close()
        if kind.startswith("text/event-stream"):
            return resp.status, kind, [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
        try:
            return resp.status, kind, json.loads(raw)
        except ValueError:
            return resp.status, kind, raw


def _json(**body: Any) -> bytes:
    return json.dumps(body).encode()


def assert_openai_error(answer: Tuple[int, str, Any], status: int, words: str = "") -> dict:
    """``answer`` is ``status`` with an OpenAI-style JSON error mentioning ``words``, leaking nothing."""
    got, kind, body = answer
    assert got == status and kind.startswith("application/json"), answer
    assert isinstance(body, dict) and set(body) == {"error"}, answer
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, answer
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error"), answer
    assert isinstance(error["message"], str) and error["message"], answer
    assert not LEAK.search(error["message"]), answer
    assert words.lower() in error["message"].lower(), answer
    return error


def _expected(model: Path) -> dict:
    """Greedy replies of an in-process LongLlama with the server's settings (as test_server computes them)."""
    llm = LongLlama(str(model), group_size=G, window=W, mode=MODE, n_ctx=N_CTX, n_batch=N_BATCH,
                    n_ubatch=N_BATCH, n_threads=1, n_threads_batch=1, type_k=0, type_v=0, verbose=False)
    try:
        bias = {int(k): v for k, v in ASCII_ONLY.items()}
        expected = {p: llm.create_completion(p, max_tokens=12, temperature=0.0, logit_bias=bias)["choices"][0]["text"]
                    for p in PROMPTS[:2]}
        expected["chat"] = llm.create_chat_completion(MESSAGES, max_tokens=12, temperature=0.0,
                                                      logit_bias=bias)["choices"][0]["message"]["content"]
    finally:
        llm.close()
    return expected


@pytest.fixture(scope="module")
def faulty(tiny_chat_path):
    """(one server for all the faults, the greedy replies it must still give afterwards)."""
    expected = _expected(tiny_chat_path)
    server = DrainedServer(tiny_chat_path, MODE)
    yield server, expected
    server.stop()


SHORT = [{"role": "user", "content": "hi"}]
#: (id, path, body, status, words the message must hold)
FAULTS = [
    ("malformed-json", "/v1/completions", b'{"prompt": "ab", ', 400, "JSON"),
    ("form-body", "/v1/completions", b"prompt=ab", 400, "JSON"),
    ("non-utf8-body", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400, "UTF-8"),
    ("max-tokens-abc", "/v1/completions", _json(prompt="ab", max_tokens="abc"), 400, "max_tokens"),
    ("max-tokens-negative", "/v1/completions", _json(prompt="ab", max_tokens=-1), 400, "max_tokens"),
    ("prompt-int", "/v1/completions", _json(prompt=123), 400, "prompt"),
    ("prompt-token-ids", "/v1/completions", _json(prompt=[1, 2]), 400, "prompt"),
    ("prompt-list", "/v1/completions", _json(prompt=["a", "b"], max_tokens=2), 400, "one prompt per request"),
    ("prompt-list-stream", "/v1/completions", _json(prompt=["a", "b"], max_tokens=2, stream=True), 400,
     "one prompt per request"),
    ("messages-not-list", "/v1/chat/completions", _json(messages="hi"), 400, "messages"),
    ("lone-surrogate", "/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', 400, "unicode"),
    ("lone-surrogate-stream", "/v1/completions", b'{"prompt": "a\\udc00", "max_tokens": 2, "stream": true}', 400,
     "unicode"),
    ("lone-surrogate-chat", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}', 400, "unicode"),
    ("lone-surrogate-tokenize", "/extras/tokenize", b'{"input": "\\ud800"}', 400, "unicode"),
    ("too-long-stream", "/v1/completions", _json(prompt=TOO_LONG, max_tokens=2, stream=True), 400,
     f"maximum context length is {N_CTX} tokens"),
    ("too-long-chat-stream", "/v1/chat/completions",
     _json(messages=[{"role": "user", "content": TOO_LONG}], max_tokens=2, stream=True), 400,
     f"maximum context length is {N_CTX} tokens"),
    ("logit-bias-oov", "/v1/completions", _json(prompt="ab", max_tokens=2, logit_bias={"99999": 100}), 400,
     "99999"),
    ("logit-bias-negative", "/v1/completions", _json(prompt="ab", max_tokens=2, logit_bias={"-1": 100}), 400, "-1"),
    ("logit-bias-oov-stream", "/v1/completions",
     _json(prompt="ab", max_tokens=2, stream=True, logit_bias={"99999": 100}), 400, "99999"),
    ("logit-bias-oov-chat", "/v1/chat/completions", _json(messages=SHORT, max_tokens=2, logit_bias={"99999": 100}),
     400, "99999"),
    ("logit-bias-negative-chat-stream", "/v1/chat/completions",
     _json(messages=SHORT, max_tokens=2, stream=True, logit_bias={"-1": 100}), 400, "-1"),
    ("detokenize-oov", "/extras/detokenize", _json(tokens=[99999]), 400, "99999"),
    ("detokenize-negative", "/extras/detokenize", _json(tokens=[-7]), 400, "-7"),
    ("grammar-unparsable", "/v1/completions", _json(prompt="ab", max_tokens=2, grammar='root ::= "a" | nope'), 400,
     "cannot parse this grammar"),
    ("grammar-unparsable-chat-stream", "/v1/chat/completions",
     _json(messages=SHORT, max_tokens=2, stream=True, grammar='root ::= root "a"'), 400, "cannot parse this grammar"),
    ("unknown-route", "/v1/no-such-route", b"{}", 404, "not found"),
]


@pytest.mark.parametrize("path, body, status, words", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault_gets_a_clean_openai_error(faulty, path, body, status, words):
    server, _ = faulty
    assert_openai_error(server.send(path, body), status, words)
    assert server.proc.poll() is None, "the server died"


def test_streamed_prompt_too_long_gets_the_non_streamed_400(faulty):
    """The same status and body with and without "stream": the error comes before the stream starts."""
    server, _ = faulty
    for path, request in [("/v1/completions", dict(prompt=TOO_LONG, max_tokens=2)),
                          ("/v1/chat/completions", dict(messages=[{"role": "user", "content": TOO_LONG}],
                                                        max_tokens=2))]:
        plain = server.send(path, _json(**request))
        streamed = server.send(path, _json(**request, stream=True))
        error = assert_openai_error(plain, 400, "maximum context length")
        assert error["code"] == "context_length_exceeded"
        assert streamed == plain


def test_faults_left_no_damage(faulty):
    """After all the faults: still up, greedy replies (plain and streamed) as before, no traceback logged."""
    server, expected = faulty
    for prompt in PROMPTS[:2]:
        status, body = server.post("/v1/completions", _completion(prompt))
        assert status == 200 and body["choices"][0]["text"] == expected[prompt], body
        status, events = server.post("/v1/completions", _completion(prompt, stream=True))
        assert status == 200 and _streamed_text(events) == expected[prompt]
    status, body = server.post("/v1/chat/completions", _chat())
    assert status == 200 and body["choices"][0]["message"]["content"] == expected["chat"], body
    status, events = server.post("/v1/chat/completions", _chat(stream=True))
    assert status == 200 and _streamed_text(events) == expected["chat"]
    assert server.proc.poll() is None, "the server died"
    log = "".join(server.lines)
    assert "Traceback" not in log, log[-4000:]


# ------------------------------------------------------------------ the error middleware on its own


async def _serve_once(app, body: bytes = b"{}") -> List[dict]:
    """Call the ASGI ``app`` with one POST /v1/completions; the messages it sends."""
    sent: List[dict] = []
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive, send)
    return sent


def _stream_app(*events: bytes, error: Exception):
    """An ASGI app that starts an event stream, sends ``events`` (b"" ends the body), then raises ``error``."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": bool(event)})
        raise error
    return app


def _json_answer(sent: List[dict]) -> Tuple[int, Any]:
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"], sent
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.parametrize("events", [(), (b"",)], ids=["nothing-sent", "empty-stream-ended"])
def test_stream_failing_before_its_first_event_is_a_json_400(events):
    from selfextend_gguf.server import OpenAIErrors

    app = OpenAIErrors(_stream_app(*events, error=InvalidTokenError("logit_bias token id -1 is not in it")))
    status, body = _json_answer(asyncio.run(_serve_once(app)))
    assert status == 400 and body["error"]["type"] == "invalid_request_error", body
    assert "-1" in body["error"]["message"]


def test_stream_failing_after_its_first_event_ends_with_an_error_event():
    from selfextend_gguf.server import OpenAIErrors

    app = OpenAIErrors(_stream_app(b'data: {"x": 1}\n\n', error=ValueError("bad value")))
    sent = asyncio.run(_serve_once(app))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert sent[1]["body"] == b'data: {"x": 1}\n\n'
    event = sent[2]["body"].decode()
    assert event.startswith("data: ") and event.endswith("\n\n"), event
    assert json.loads(event[len("data: "):])["error"]["message"] == "bad value"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False} and len(sent) == 4


def test_internal_error_is_a_generic_500():
    """The server's own failure: a 500 that names no path (the traceback goes to the log only)."""
    from selfextend_gguf.server import OpenAIErrors

    app = OpenAIErrors(_stream_app(error=RuntimeError('broke in File "/srv/app/site-packages/x.py", line 3')))
    status, body = _json_answer(asyncio.run(_serve_once(app)))
    assert status == 500 and body["error"]["type"] == "server_error", body
    assert "RuntimeError" in body["error"]["message"] and not LEAK.search(body["error"]["message"]), body


# ------------------------------------------------------------------ settings refused before loading

MISSING = "/nonexistent/model.gguf"  # a setting refused before loading never reaches the missing file


@pytest.mark.parametrize("limit", [0, -1])
def test_create_app_refuses_limit_concurrency_below_one(limit):
    from selfextend_gguf.server import create_app

    with pytest.raises(SelfExtendConfigError, match=rf"limit_concurrency.*got {limit}\b.*unset"):
        create_app(MISSING, limit_concurrency=limit)


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_serve_refuses_limit_concurrency_below_one(tiny_chat_path, limit):
    """An argparse error (status 2, usage, the option and the value), not a server answering 500s."""
    cmd = [sys.executable, "-m", "selfextend_gguf.cli", "serve", "--model", str(tiny_chat_path),
           "--host", "127.0.0.1", "--port", str(_free_port()), "--limit-concurrency", limit]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=_OUTSIDE_CHECKOUT)
    assert done.returncode == 2, done
    assert "--limit-concurrency" in done.stderr and f"got {limit}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "usage:" in done.stderr, done.stderr


def test_create_app_names_a_misspelled_setting():
    from selfextend_gguf.server import create_app

    with pytest.raises(TypeError, match=r"unexpected keyword argument 'grop_size'; did you mean 'group_size'\?"):
        create_app(MISSING, grop_size=8)


def test_long_model_settings_refuse_unknown_fields_and_read_the_environment(monkeypatch):
    """A guard: unknown fields stay refused (also when constructed directly), environment variables still read."""
    from pydantic import ValidationError

    from selfextend_gguf.server import LongModelSettings

    with pytest.raises(ValidationError, match="grop_size"):
        LongModelSettings(model=MISSING, grop_size=8)
    monkeypatch.setenv("GROUP_SIZE", "3")
    monkeypatch.setenv("GROP_SIZE", "5")  # an unknown environment variable is ignored, as before
    assert LongModelSettings(model=MISSING).group_size == 3
