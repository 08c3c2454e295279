"""Bad input beyond files and libraries (tests/test_errors.py): unsupported models, bad settings,
prompts longer than n_ctx. Each case runs in a subprocess (test_errors._expect), so a crash in C
fails the test; each asserts the exception type and that the message names problem and fix.
Then a hypothesis fuzz of the argument surface, also in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from test_errors import _expect
from tiny_models import write_tiny_unsupported


@pytest.fixture(scope="module")
def unsupported(tmp_path_factory):
    d = tmp_path_factory.mktemp("unsupported")
    return {arch: write_tiny_unsupported(d / f"{arch}.gguf", arch) for arch in ("bloom", "mamba", "jamba")}


def _open(path, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"from selfextend_gguf import LongLlama; LongLlama({str(path)!r}, verbose=False, {args})"


# -- models SelfExtend cannot apply to ------------------------------------------------------


def test_model_without_rope(unsupported):
    """bloom (ALiBi): refused even when no extension is asked for (n_ctx within the trained 64)."""
    for n_ctx in (32, 128):
        _expect(_open(unsupported["bloom"], n_ctx=n_ctx), "UnsupportedModelError",
                "bloom does not use RoPE", "Use llama_cpp.Llama")


@pytest.mark.parametrize("arch", ["mamba", "jamba"])
def test_recurrent_and_hybrid_models(unsupported, arch):
    for mode in ("shift", "exact"):
        _expect(_open(unsupported[arch], n_ctx=128, mode=mode), "UnsupportedModelError",
                f"{arch} is a recurrent or hybrid model", "Use llama_cpp.Llama")


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value,needle", [(0, "group_size must be >= 1"), (-2, "group_size must be >= 1"),
                                          (2.0, "group_size must be an integer"), ("4", "group_size must be an integer"),
                                          (True, "group_size must be an integer")])
def test_group_size_invalid(tiny_llama_path, value, needle):
    _expect(_open(tiny_llama_path, n_ctx=128, group_size=value), "SelfExtendConfigError", needle)


@pytest.mark.parametrize("value,needles", [(0, ["window must be >= 1"]), (-8, ["window must be >= 1"]),
                                           (64, ["window=64", "trained context length 64", "Try window="]),
                                           (500, ["window=500", "Try window="]),
                                           (8.5, ["window must be an integer"])])
def test_window_invalid(tiny_llama_path, value, needles):
    _expect(_open(tiny_llama_path, n_ctx=128, group_size=4, window=value, mode="exact"),
            "SelfExtendConfigError", *needles)


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_n_ctx_beyond_reach(tiny_llama_path, mode):
    """(64 - 16) * 4 + 16 = 208 < 300: names the reach and the group size that would do."""
    _expect(_open(tiny_llama_path, n_ctx=300, group_size=4, window=16, mode=mode), "SelfExtendConfigError",
            "n_ctx=300", "(L - W) * G + W = 208", "group_size >= 6")


def test_shift_window_not_multiple_of_group(tiny_llama_path):
    _expect(_open(tiny_llama_path, n_ctx=128, group_size=3, window=16, mode="shift"), "SelfExtendConfigError",
            "multiple of group_size", "window=18", "mode='exact'")


def test_unknown_mode(tiny_llama_path):
    _expect(_open(tiny_llama_path, n_ctx=128, mode="fast"), "SelfExtendConfigError", "mode='fast'", "mode='exact'")


# -- prompts longer than n_ctx -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_prompt_longer_than_n_ctx(tiny_llama_path, mode):
    """create_completion, eval and generate: ContextLengthError naming n_ctx and the reach; afterwards
    the instance still gives what a fresh one gives (nothing half-evaluated is left behind)."""
    code = f"""
    from selfextend_gguf import LongLlama, ContextLengthError
    kw = dict(n_ctx=200, group_size=4, window=16, mode={mode!r}, n_batch=32, n_threads=1, verbose=False)
    llm = LongLlama({str(tiny_llama_path)!r}, **kw)
    short = "abc " * 20
    before = llm.create_completion(short, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    n_ctx = llm.n_ctx()
    too_long = [llm.token_bos()] + [5] * (n_ctx + 4)
    errors = []
    for attempt in (lambda: llm.create_completion(too_long, max_tokens=4),
                    lambda: list(llm.create_completion(too_long, max_tokens=4, stream=True)),
                    lambda: llm.eval(too_long),
                    lambda: next(llm.generate(too_long))):
        try:
            attempt()
        except ContextLengthError as e:
            errors.append(str(e))
    assert len(errors) == 4, errors
    after = llm.create_completion(short, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    fresh = LongLlama({str(tiny_llama_path)!r}, **kw).create_completion(short, max_tokens=6, temperature=0.0)
    assert after == before == fresh["choices"][0]["text"], (before, after, fresh)
    raise ContextLengthError(errors[0] + " || " + errors[2])
    """
    _expect(code, "ContextLengthError", "Requested tokens (205) exceed context window of 200 (n_ctx=200)",
            "+ 205 new) exceed the context window n_ctx=200",
            "group_size=4, window=16 reach 208", "larger n_ctx")


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_bad_tokens(tiny_llama_path, mode):
    """Token ids outside the vocabulary, and an empty token prompt: InvalidTokenError, not llama_decode's -1."""
    base = f"from selfextend_gguf import LongLlama; llm = LongLlama({str(tiny_llama_path)!r}, n_ctx=128, mode={mode!r}, verbose=False)"
    _expect(base + "; llm.create_completion([1, 5, 400], max_tokens=2)", "InvalidTokenError",
            "token id 400 is not in this model's vocabulary (ids 0..287)", "llm.tokenize")
    _expect(base + "; llm.eval([1, -3])", "InvalidTokenError", "token id -3", "llm.tokenize")
    _expect(base + "; llm.create_completion([], max_tokens=2)", "InvalidTokenError", "empty token list",
            "llm.token_bos()")


# -- fuzz -----------------------------------------------------------------------------------

FUZZ = r"""
import sys, json
from hypothesis import given, settings, strategies as st, HealthCheck
from selfextend_gguf import LongLlama

PATH = sys.argv[1]
ints = lambda lo, hi: st.integers(lo, hi)
odd = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.just([1]))
construct = st.fixed_dictionaries({}, optional={
    "group_size": st.one_of(st.none(), ints(1, 8), ints(-2, 70), odd),
    "window": st.one_of(st.none(), st.sampled_from([4, 8, 16, 32]), ints(-2, 80), odd),
    "mode": st.one_of(st.sampled_from(["shift", "exact"]), st.sampled_from(["", "SHIFT"]), odd),
    "n_ctx": st.one_of(ints(1, 300), ints(1, 300), ints(-1, 4096), odd),
    "n_batch": st.one_of(ints(1, 64), st.just(0)),
    "n_ubatch": ints(1, 64),
    "logits_all": st.booleans(),
    "flash_attn": st.booleans(),
    "type_k": st.sampled_from([0, 1]),
    "type_v": st.sampled_from([0, 1]),
    "progress_callback": st.one_of(st.none(), st.just(lambda d, t: None), st.just(lambda d, t: d < 40)),
})
tokens = st.lists(ints(-5, 400), max_size=300)
text = st.text(max_size=300)
complete = st.fixed_dictionaries({"prompt": st.one_of(text, tokens)}, optional={
    "max_tokens": st.one_of(st.none(), ints(-2, 50), st.just(10**6)),
    "temperature": st.floats(-1, 3, allow_nan=False),
    "top_k": ints(-1, 400),
    "top_p": st.floats(0, 1),
    "stop": st.one_of(st.none(), text, st.lists(st.text(max_size=4), max_size=3)),
    "logprobs": st.one_of(st.none(), ints(0, 5)),
    "echo": st.booleans(),
    "stream": st.booleans(),
    "seed": ints(0, 2**31),
    "repeat_penalty": st.floats(0, 3),
})

n = 0

@settings(max_examples=int(sys.argv[2]), deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(construct, complete)
def fuzz(kwargs, call):
    global n
    n += 1
    # printed before the call: if the process dies, the last line names the culprit
    print("EXAMPLE", repr(kwargs), repr(call), flush=True)
    try:
        llm = LongLlama(PATH, n_threads=1, n_threads_batch=1, verbose=False, **kwargs)
    except Exception as e:
        return
    try:
        out = llm.create_completion(**call)
        if call.get("stream"):
            list(out)
    except Exception as e:
        pass
    # whatever happened, the instance must still work
    llm.progress_callback = None
    if llm.n_ctx() > 8:
        llm.create_completion("abc", max_tokens=2)
    llm.close()

fuzz()
print("FUZZ DONE", n, flush=True)
"""


def test_fuzz_argument_surface(tiny_llama_path, tmp_path):
    """No combination of constructor and create_completion arguments crashes the process; after any
    Python exception the instance still completes. Bounded: 80 examples, about 10-40 s."""
    script = tmp_path / "fuzz.py"
    script.write_text(textwrap.dedent(FUZZ))
    r = subprocess.run([sys.executable, str(script), str(tiny_llama_path), "80"], capture_output=True,
                       text=True, timeout=600, cwd=str(tmp_path), env={**os.environ})
    last = [line for line in r.stdout.splitlines() if line.startswith("EXAMPLE")][-1:] or ["(none)"]
    assert r.returncode == 0 and "FUZZ DONE 80" in r.stdout, (
        f"exit {r.returncode} after {last[0]}\n{r.stderr[-3000:]}")
