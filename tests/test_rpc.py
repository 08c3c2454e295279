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

from test_server import _OUTSIDE_CHECKOUT, _free_port, _terminate
from selfextend_gguf import LongLlama, SelfExtendConfigError
from selfextend_gguf.errors import RpcServerError
from selfextend_gguf.rpc import RpcLlama, parse_endpoints

#: llama.cpp splits the 2 layers and the output layer 1:2, so each server holds one attention layer
SPLIT = [1.0, 2.0]
KW = dict(n_ctx=128, n_batch=32, n_ubatch=32, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
SETTINGS = {"stock": {}, "shift": dict(mode="shift", group_size=4, window=16),
            "exact": dict(mode="exact", group_size=4, window=16),
            # exact mode's flash-attention prompt (ubatches of 4: the window of 16 holds their scratch cells),
            # whose layers share one mask and write their window's weights into it
            "exact-fa": dict(mode="exact", group_size=4, window=16, flash_attn=True, n_ubatch=4,
                             type_k=1, type_v=1)}


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
            _terminate(self.proc, timeout=10)


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
    kwargs = {**KW, **kw, **SETTINGS[setting]}
    if rpc:
        kwargs.update(rpc_servers=rpc, n_gpu_layers=-1, tensor_split=SPLIT)
    if setting == "stock":
        return RpcLlama(str(path), **kwargs)
    return LongLlama(str(path), **kwargs)


def _atol(setting: str) -> float:
    """1e-4; 1e-2 for exact mode's flash-attention prompt, which takes another path on the servers: the
    RPC backend refuses the flash attention that returns the log-sum-exp (patches/0016), so they take
    patches/0008's scratch cells, which hold the window's output in the F16 V cache (about 1e-3 of the
    logits' range here), and the local CPU takes patches/0017's. A wrong weight of the window or a
    scratch cell left in the cache is off by the order of the logits (1 to 5)."""
    return 1e-2 if setting == "exact-fa" else 1e-4


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_split_across_two_servers_equals_local(servers, tiny_llama_path, setting):
    """Prompt (100 tokens, past the trained 64) and 6 greedy decode steps: logits within 1e-4 (1e-2
    for exact mode's flash-attention prompt, which the servers and the local CPU compute two ways)."""
    local, remote = _model(tiny_llama_path, setting), _model(tiny_llama_path, setting, rpc=servers)
    try:  # closed even on failure: an rpc-server serves one client at a time
        tokens = local.tokenize(("the lazy dog jumps over the quick brown fox. " * 4).encode())[:100]
        assert len(tokens) == 100
        for llm in (local, remote):
            llm.eval(tokens)
        np.testing.assert_allclose(remote.scores[:100], local.scores[:100], atol=_atol(setting), rtol=0)
        for step in range(6):
            token = int(np.argmax(local.scores[local.n_tokens - 1]))
            for llm in (local, remote):
                llm.eval([token])
            np.testing.assert_allclose(remote.scores[local.n_tokens - 1], local.scores[local.n_tokens - 1],
                                       atol=_atol(setting), rtol=0, err_msg=f"decode step {step}")
    finally:
        local.close()
        remote.close()


def test_layers_are_on_both_servers(servers, tiny_llama_path):
    """llama.cpp's load log puts weights and a KV cache layer on each server (the comparison above
    is not vacuous: both servers run attention, so both run self-extend)."""
    code = (f"from selfextend_gguf import LongLlama\n"
            f"LongLlama({str(tiny_llama_path)!r}, n_ctx=128, mode='exact', group_size=4, window=16, verbose=True, "
            f"rpc_servers={','.join(servers)!r}, tensor_split={SPLIT!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=_OUTSIDE_CHECKOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    for endpoint in servers:
        for buffer in ("model", "KV"):
            m = re.search(rf"RPC\d+\[{re.escape(endpoint)}\] {buffer} buffer size = +([0-9.]+) MiB", r.stderr)
            assert m and float(m[1]) > 0, f"no {buffer} buffer on {endpoint}:\n{r.stderr[-6000:]}"


LOST = """
import os, signal, sys, time
from selfextend_gguf import LongLlama
from selfextend_gguf.errors import RpcServerError
path, pid, servers, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
kw = dict(n_ctx=128, n_batch=32, n_threads=1, verbose=False, mode=mode, group_size=4, window=16)
llm = LongLlama(path, rpc_servers=servers, tensor_split=[1.0, 2.0], **kw)
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
    started: List[RpcServer] = []
    try:
        for _ in range(2):
            started.append(RpcServer())
        doomed, other = started
        r = subprocess.run([sys.executable, "-c", LOST, str(tiny_llama_path), str(doomed.proc.pid),
                            f"{other.endpoint},{doomed.endpoint}", mode],
                           capture_output=True, text=True, timeout=120, cwd=_OUTSIDE_CHECKOUT)
    finally:
        for server in started:
            server.stop()
    assert r.returncode == 0, f"the client died (rc={r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4, r.stdout
    for line in lines[:2]:
        assert line.startswith("RpcServerError |") and doomed.endpoint in line and other.endpoint not in line, r.stdout
    assert lines[2:] == ["local ok | True", "closed ok"], r.stdout


RESTART = """
import os, signal, socket, subprocess, sys, time
from selfextend_gguf import LongLlama
from selfextend_gguf.errors import RpcServerError
path, pid, endpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kw = dict(n_ctx=128, n_batch=32, n_threads=1, verbose=False, mode="exact", group_size=4, window=16)
prompt = ("the lazy dog jumps over the quick brown fox. " * 4)[:100]
old = LongLlama(path, rpc_servers=[endpoint], **kw)
old.create_completion(prompt, max_tokens=2, temperature=0.0)
os.kill(pid, signal.SIGKILL)
time.sleep(0.5)
try:
    old.create_completion(prompt[:50], max_tokens=2, temperature=0.0)
except RpcServerError:
    print("old lost")
port = endpoint.rpartition(":")[2]
server = subprocess.Popen([sys.executable, "-m", "selfextend_gguf.cli", "rpc-server", "--port", port, "--threads", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    try:  # the old model still holds the lost connection, which ggml does not retry
        LongLlama(path, rpc_servers=[endpoint], **kw)
    except RpcServerError as e:
        print("held |", "close that model" in str(e))
    old.close()
    new = LongLlama(path, rpc_servers=[endpoint], **kw)
    local = LongLlama(path, **kw)
    a = new.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    b = local.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    print("new ok |", a == b)
    new.close()
finally:
    server.terminate()
    server.wait(timeout=30)
"""


def test_new_model_on_a_restarted_server(tiny_llama_path):
    """After a restart of the server: while a model on the lost connection is alive, a new model
    is refused with what to do (ggml keeps one connection per address); once it is closed, a
    new model connects again and answers as a local one."""
    first = RpcServer()
    try:
        r = subprocess.run([sys.executable, "-c", RESTART, str(tiny_llama_path), str(first.proc.pid), first.endpoint],
                           capture_output=True, text=True, timeout=180, cwd=_OUTSIDE_CHECKOUT)
    finally:
        first.stop()
    assert r.returncode == 0, f"rc={r.returncode}:\n{r.stdout}\n{r.stderr[-3000:]}"
    assert r.stdout.strip().splitlines() == ["old lost", "held | True", "new ok | True"], r.stdout


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
                                 ["127.0.0.1:1", "127.0.0.1:1"], [5000], "[::1]:50052", "::1:50052"])
def test_malformed_server_addresses(bad):
    with pytest.raises(SelfExtendConfigError, match="rpc_servers|host:port"):
        parse_endpoints(bad)


def test_endpoints_from_a_comma_separated_string():
    assert parse_endpoints("a:1, b:2") == ["a:1", "b:2"]
    assert parse_endpoints(["127.0.0.1:050052"]) == ["127.0.0.1:50052"]


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_rpc_server_listens_on_loopback_only(servers):
    """The default --host is 127.0.0.1: the listening socket is bound to 127.0.0.1, not 0.0.0.0."""
    port = int(servers[0].rpartition(":")[2])
    rows = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"], listening


def test_server_settings_put_the_model_on_the_servers(servers, tiny_chat_path):
    """``serve --rpc`` becomes ``rpc_servers`` in the server's settings, and the proxy passes them on."""
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    from selfextend_gguf import cli
    from selfextend_gguf.server import LongLlamaProxy, LongModelSettings

    args = cli.build_parser().parse_args(["serve", "--rpc", ",".join(servers)])
    settings = LongModelSettings(model=str(tiny_chat_path), n_ctx=128, rpc_servers=args.rpc.split(","), verbose=False)
    llm = LongLlamaProxy.load_llama_from_model_settings(settings)
    try:
        assert llm._rpc_servers == servers and llm.model_params.n_gpu_layers > 0
        assert llm.model_params.devices  # the servers' devices, not llama.cpp's default (NULL)
    finally:
        llm.close()


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
