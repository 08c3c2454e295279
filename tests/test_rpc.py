"""llama.cpp's RPC backend (``rpc_servers``, ``selfextend-gguf rpc-server``), on loopback.

Two ``rpc-server`` processes on 127.0.0.1, each on the CPU with one thread, started through the
CLI and stopped by the fixture. The reference is the same model evaluated locally: logits of a
tiny F32 model split across both servers must equal it within 1e-4 in the stock, shift and
exact modes, for a prompt past the trained length and for decoding. A server that dies must give
a Python exception and leave the client running; one that is not there is named.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import List

import numpy as np
import pytest

from test_server import _OUTSIDE_CHECKOUT, _free_port
from selfextend_gguf import LongLlama, SelfExtendConfigError
from selfextend_gguf.errors import RpcServerError
from selfextend_gguf.rpc import RpcLlama, parse_endpoints

KW = dict(n_ctx=128, n_batch=32, n_ubatch=32, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
SETTINGS = {"stock": {}, "shift": dict(mode="shift", group_size=4, window=16),
            "exact": dict(mode="exact", group_size=4, window=16)}


class RpcServer:
    """``selfextend-gguf rpc-server`` on 127.0.0.1 and a free port, one CPU thread."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selfextend_gguf.cli", "rpc-server", "--port", str(self.port), "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=_OUTSIDE_CHECKOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"rpc-server exited with {self.proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, "rpc-server did not listen within 60 s"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def servers():
    started: List[RpcServer] = []
    try:
        for _ in range(2):
            started.append(RpcServer())
        yield [s.endpoint for s in started]
    finally:
        for s in started:
            s.stop()


def _model(path, setting: str, rpc=None, **kw):
    kwargs = {**KW, **kw}
    if rpc:
        kwargs.update(rpc_servers=rpc, n_gpu_layers=-1, tensor_split=[1.0, 1.0])
    if setting == "stock":
        return RpcLlama(str(path), **kwargs)
    return LongLlama(str(path), **SETTINGS[setting], **kwargs)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_split_across_two_servers_equals_local(servers, tiny_llama_path, setting):
    """Prompt (100 tokens, past the trained 64) and 6 greedy decode steps: logits within 1e-4."""
    local, remote = _model(tiny_llama_path, setting), _model(tiny_llama_path, setting, rpc=servers)
    tokens = local.tokenize(("the lazy dog jumps over the quick brown fox. " * 4).encode())[:100]
    assert len(tokens) == 100
    for llm in (local, remote):
        llm.eval(tokens)
    np.testing.assert_allclose(remote.scores[:100], local.scores[:100], atol=1e-4, rtol=0)
    for step in range(6):
        token = int(np.argmax(local.scores[local.n_tokens - 1]))
        for llm in (local, remote):
            llm.eval([token])
        np.testing.assert_allclose(remote.scores[local.n_tokens - 1], local.scores[local.n_tokens - 1],
                                   atol=1e-4, rtol=0, err_msg=f"decode step {step}")
    local.close()
    remote.close()


def test_layers_are_on_both_servers(servers, tiny_llama_path):
    """llama.cpp's load log puts a model buffer on each server (the comparison above is not vacuous)."""
    code = (f"from selfextend_gguf import LongLlama\n"
            f"LongLlama({str(tiny_llama_path)!r}, n_ctx=128, mode='exact', group_size=4, window=16, verbose=True, "
            f"rpc_servers={','.join(servers)!r}, tensor_split=[1.0, 1.0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=_OUTSIDE_CHECKOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    for endpoint in servers:
        assert re.search(rf"RPC\d+\[{re.escape(endpoint)}\].*model buffer size", r.stderr) or \
            re.search(rf"{re.escape(endpoint)}.*buffer size", r.stderr), r.stderr[-3000:]


LOST = """
import os, signal, sys, time
from selfextend_gguf import LongLlama
from selfextend_gguf.errors import RpcServerError
path, pid, servers, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
kw = dict(n_ctx=128, n_batch=32, n_threads=1, verbose=False, mode=mode, group_size=4, window=16)
llm = LongLlama(path, rpc_servers=servers, tensor_split=[1.0, 1.0], **kw)
prompt = ("the lazy dog jumps over the quick brown fox. " * 4)[:100]
first = llm.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
os.kill(pid, signal.SIGKILL)
time.sleep(0.5)
for attempt in range(2):  # the first failure, and every later use
    try:
        llm.create_completion(prompt[:60], max_tokens=4, temperature=0.0)
        print("no exception")
    except RpcServerError as e:
        print("RpcServerError |", e)
local = LongLlama(path, **kw)  # the process goes on
print("local ok |", local.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"] == first)
llm.close()
print("closed ok")
"""


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_server_lost_mid_session_is_an_exception(tiny_llama_path, mode):
    """Was an abort of the whole client (GGML_ABORT in ggml-rpc)."""
    doomed, other = RpcServer(), RpcServer()
    try:
        r = subprocess.run([sys.executable, "-c", LOST, str(tiny_llama_path), str(doomed.proc.pid),
                            f"{other.endpoint},{doomed.endpoint}", mode],
                           capture_output=True, text=True, timeout=120, cwd=_OUTSIDE_CHECKOUT)
    finally:
        doomed.stop()
        other.stop()
    assert r.returncode == 0, f"the client died (rc={r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4, r.stdout
    for line in lines[:2]:
        assert line.startswith("RpcServerError |") and doomed.endpoint in line and other.endpoint not in line, r.stdout
    assert lines[2:] == ["local ok | True", "closed ok"], r.stdout


def test_absent_server_is_named(tiny_llama_path):
    port = _free_port()
    code = (f"from selfextend_gguf import LongLlama\n"
            f"try:\n    LongLlama({str(tiny_llama_path)!r}, n_ctx=128, rpc_servers=['127.0.0.1:{port}'], verbose=False)\n"
            f"except Exception as e:\n    print(type(e).__name__, '|', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=_OUTSIDE_CHECKOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("RpcServerError |") and f"127.0.0.1:{port}" in r.stdout, r.stdout
    assert "rpc-server --port" in r.stdout, r.stdout


@pytest.mark.parametrize("bad", ["localhost", "localhost:", "host:abc", "host:0", "host:70000", ":5000", [],
                                 ["127.0.0.1:1", "127.0.0.1:1"], [5000]])
def test_malformed_server_addresses(bad):
    with pytest.raises(SelfExtendConfigError, match="rpc_servers|host:port"):
        parse_endpoints(bad)


def test_endpoints_from_a_comma_separated_string():
    assert parse_endpoints("a:1, b:2") == ["a:1", "b:2"]
    assert parse_endpoints(["[::1]:50052"]) == ["[::1]:50052"]


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_rpc_server_listens_on_loopback_only(servers):
    """The default --host is 127.0.0.1: the listening socket is bound to 127.0.0.1, not 0.0.0.0."""
    port = int(servers[0].rpartition(":")[2])
    rows = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"], listening


def test_cli_rpc_flag_reaches_the_model(servers, tiny_llama_path, monkeypatch):
    """``--rpc`` of the CLI subcommands becomes ``rpc_servers``."""
    from selfextend_gguf import cli

    args = cli.build_parser().parse_args(["chat", "--model", str(tiny_llama_path), "--rpc", ",".join(servers)])
    assert parse_endpoints(args.rpc) == servers
    args = cli.build_parser().parse_args(["serve", "--rpc", servers[0]])
    assert args.rpc == servers[0]
    args = cli.build_parser().parse_args(["bench", "--rpc", servers[0]])
    assert args.rpc == servers[0]


@pytest.mark.slow
def test_smollm2_passkey_12k_exact_mode_over_rpc(servers):
    """1.5x SmolLM2's trained length, exact mode, every layer on the two loopback servers: the key is
    found, and the answer is the local run's."""
    import random

    from selfextend_gguf import default_model_path
    from selfextend_gguf.passkey import found, prompt_for_tokens, random_key

    kw = dict(mode="exact", n_ctx=12288 + 64, n_batch=512, n_threads=2, verbose=False)
    llm = LongLlama(str(default_model_path()), rpc_servers=servers, tensor_split=[1.0, 1.0], **kw)
    key = random_key(random.Random(1))
    prompt = prompt_for_tokens(12288, 0.5, key, lambda s: llm.tokenize(s.encode(), add_bos=True))
    answer = llm.create_completion(prompt.text, max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.close()
    assert found(answer, key), answer
