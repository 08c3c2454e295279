"""What a new user's first hour found (issue 16), on LongLlama itself: ids outside the vocabulary,
completions that reach max_tokens or n_ctx inside a multi-byte character, states that must be
refused, a failed load, misspelled keywords, use after close(), shift-mode embeddings, "~" paths.

Crashes in C are tested in a subprocess (test_errors._expect): an abort or a segfault fails the test
instead of killing the suite. References are independent: the stock ``llama_cpp.Llama`` and fresh
instances, never this package's earlier output.
"""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest

from test_errors import _expect, _run
from selfextend_gguf import LongLlama, SelfExtendConfigError, default_model_path
from selfextend_gguf.errors import ModelClosedError, StateError
from selfextend_gguf.long_llama import llama_cpp

G, W = 4, 16
#: the tiny spm vocabulary's byte tokens are ids 3..258 (tests/tiny_models.py); 0xF0 opens a 4-byte character
LEAD_F0 = 3 + 0xF0
KW = dict(group_size=G, window=W, n_batch=32, n_threads=1, verbose=False)


def _long_llama(path, mode, n_ctx=128, **kw) -> LongLlama:
    return LongLlama(str(path), mode=mode, n_ctx=n_ctx, **{**KW, **kw})


# -- 1. ids outside the vocabulary ----------------------------------------------------------


@pytest.mark.parametrize("tokens", [[99999], [-7], [1, 5, 288]])
def test_detokenize_refuses_ids_outside_the_vocabulary(tiny_llama_path, tokens):
    """Aborted the interpreter with std::out_of_range (signal 6) before."""
    _expect(f"""
        from selfextend_gguf import LongLlama
        llm = LongLlama({str(tiny_llama_path)!r}, n_ctx=128, verbose=False)
        assert llm.detokenize([72, 73]) == b"EF"  # byte tokens 3 + ord(c)
        llm.detokenize({tokens!r})
        """, "InvalidTokenError", f"token id {[t for t in tokens if not 0 <= t < 288][0]}", "ids 0..287",
            "llm.tokenize")


@pytest.mark.parametrize("bias", [{"288": 5.0}, {"-1": 100.0}, {"x": 1.0}])
def test_logit_bias_outside_the_vocabulary(tiny_llama_path, bias):
    """An id past the vocabulary raised inside the sampler; -1 biased the last token (numpy indexing)."""
    _expect(f"""
        from selfextend_gguf import LongLlama
        llm = LongLlama({str(tiny_llama_path)!r}, n_ctx=128, verbose=False)
        llm.create_completion("abc", max_tokens=2, logit_bias={bias!r})
        """, "InvalidTokenError", "logit_bias", "0..287")


GRAMMARS = ['root ::= "a" | undefined-rule', 'root ::= "a" | bad_name', 'root ::= root "a"', 'root ::= ("a"']


@pytest.mark.parametrize("grammar", GRAMMARS)
@pytest.mark.parametrize("call", ["llm.create_completion('abc', max_tokens=3, grammar=g)",
                                  "next(llm.generate(llm.tokenize(b'abc'), grammar=g))"])
def test_grammar_llama_cpp_cannot_parse(tiny_llama_path, grammar, call):
    """llama.cpp returns no sampler for such a grammar, and llama-cpp-python added it unchecked:
    a segfault (the server died with it)."""
    _expect(f"""
        from selfextend_gguf import LongLlama
        from llama_cpp import LlamaGrammar
        llm = LongLlama({str(tiny_llama_path)!r}, n_ctx=128, verbose=False)
        g = LlamaGrammar.from_string({grammar!r}, verbose=False)
        {call}
        """, "InvalidGrammarError", "cannot parse this grammar")


def test_grammar_that_parses_still_constrains(tiny_llama_path):
    """The check frees its sampler and lets a valid grammar through: the text follows it."""
    llm = _long_llama(tiny_llama_path, "exact")
    grammar = llama_cpp.LlamaGrammar.from_string('root ::= ("ab" | "cd")+', verbose=False)
    text = llm.create_completion("the lazy dog", max_tokens=6, temperature=0.0, grammar=grammar)["choices"][0]["text"]
    assert text and all(p in ("ab", "cd") for p in (text[i:i + 2] for i in range(0, len(text) - 1, 2))), text
    with pytest.raises(TypeError, match="LlamaGrammar"):
        llm.create_completion("abc", max_tokens=2, grammar='root ::= "a"')


# -- 2. completions end at max_tokens and n_ctx ------------------------------------------------


def _stock_tokens(path, prompt: str, n: int, bias: dict) -> list:
    """The first n greedy tokens of the stock llama_cpp.Llama (an independent reference)."""
    stock = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, verbose=False)
    tokens = stock.tokenize(prompt.encode())
    out = []
    processor = llama_cpp.LogitsProcessorList([lambda ids, scores: _biased(scores, bias)])
    for token in stock.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, logits_processor=processor):
        out.append(token)
        if len(out) == n:
            break
    stock.close()
    return out


def _biased(scores, bias):
    scores = scores.copy()
    for token, value in bias.items():
        scores[token] += value
    return scores


@pytest.mark.parametrize("mode", ["shift", "exact"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_inside_a_multibyte_character(tiny_llama_path, mode, stream):
    """Every token a 4-byte lead: the text never completes a character, so llama-cpp-python skipped its
    max_tokens check and decoded on to n_ctx (ContextLengthError). Now: exactly max_tokens tokens,
    finish_reason "length", and the text is the stock model's first tokens decoded (whole characters)."""
    llm = _long_llama(tiny_llama_path, mode)
    bias = {LEAD_F0: 30.0, 3 + ord("a"): 29.0}  # mostly 0xF0, sometimes "a"
    prompt = "the quick brown fox " * 2
    out = llm.create_completion(prompt, max_tokens=7, temperature=0.0, logit_bias=bias, stream=stream)
    if stream:
        chunks = list(out)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = out["choices"][0]["text"], out["choices"][0]["finish_reason"]
        assert out["usage"]["completion_tokens"] == 7
    assert finish == "length"
    expected = llm.detokenize(_stock_tokens(tiny_llama_path, prompt, 7, bias)).decode("utf-8", errors="ignore")
    assert text == expected


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_generation_stops_at_n_ctx(tiny_llama_path, mode):
    """max_tokens past n_ctx (and unlimited): the completion fills the context and stops with "length"."""
    llm = _long_llama(tiny_llama_path, mode, n_ctx=100)
    prompt = "fox " * 20
    n_prompt = len(llm.tokenize(prompt.encode()))
    for max_tokens in (200, -1, None):
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, logit_bias={LEAD_F0: 30.0})
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == 100 - n_prompt
        assert llm.n_tokens <= 100


def test_smollm2_moon_emoji_at_n_ctx():
    """The reproducer of the issue: n_ctx=64, an emoji prompt, max_tokens=100 raised ContextLengthError.
    The text must be a prefix of what the stock Llama generates with room to spare."""
    smollm2_path = default_model_path()
    prompt = "Moon emoji!!!!!: " + "🌙✨🌕🌟" * 3
    llm = LongLlama(str(smollm2_path), n_ctx=64, n_threads=2, verbose=False)
    out = llm.create_completion(prompt, max_tokens=100, temperature=0.0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    assert out["usage"]["total_tokens"] <= 64
    stock = llama_cpp.Llama(str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    free = stock.create_completion(prompt, max_tokens=100, temperature=0.0)["choices"][0]["text"]
    assert free.startswith(choice["text"]) and len(choice["text"]) > 0


# -- 3, 4. states ------------------------------------------------------------------------------


def _next_logits(llm, tokens):
    llm.eval(tokens)
    return llm.scores[llm.n_tokens - 1].copy()


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_state_round_trip_and_refusals(tiny_llama_path, mode):
    import numpy as np

    llm = _long_llama(tiny_llama_path, mode, n_ctx=200, logits_all=True)
    prompt = llm.tokenize(("the lazy dog " * 8).encode())
    assert len(prompt) > 64  # past the trained length: grouping is in the cache
    llm.eval(prompt)
    state = llm.save_state()
    expected = _next_logits(llm, [5, 6])
    llm.reset()
    llm.load_state(state)
    np.testing.assert_array_equal(_next_logits(llm, [5, 6]), expected)

    # another setting: refused before anything is touched
    other = _long_llama(tiny_llama_path, mode, n_ctx=200, group_size=8)
    with pytest.raises(SelfExtendConfigError, match="saved with self-extend"):
        other.load_state(state)

    # a plain llama_cpp.Llama state has no record
    plain = llama_cpp.Llama(str(tiny_llama_path), n_ctx=200, n_threads=1, verbose=False)
    plain.eval(prompt[:40])
    with pytest.raises(StateError, match="no self-extend record"):
        llm.load_state(plain.save_state())

    # byte flips in the native data, and an edited token record
    for offset in (20, 32):
        flipped = llm.save_state()
        data = bytearray(flipped.llama_state)
        data[offset] ^= 0xFF
        flipped.llama_state = bytes(data)
        with pytest.raises(StateError, match="changed since it was saved"):
            llm.load_state(flipped)
    edited = llm.save_state()
    edited.n_tokens -= 1
    with pytest.raises(StateError, match="changed since it was saved"):
        llm.load_state(edited)


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_failed_native_load_leaves_the_instance_empty(tiny_llama_path, mode):
    """A state of 300 tokens cannot fit a 256-cell cache: llama.cpp refuses it. Before, input_ids and
    n_tokens were already replaced, and later completions reused a cache that did not match them."""
    big = _long_llama(tiny_llama_path, mode, n_ctx=512, group_size=16)
    big.eval(big.tokenize(("over the hill " * 30).encode())[:300])
    state = big.save_state()
    small = _long_llama(tiny_llama_path, mode, n_ctx=128, group_size=16)
    prompt = "the quick brown fox jumps " * 3
    small.create_completion(prompt, max_tokens=4, temperature=0.0)  # something cached to reuse wrongly
    with pytest.raises(StateError, match="could not load this state"):
        small.load_state(state)
    assert small.n_tokens == 0
    got = small.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    fresh = _long_llama(tiny_llama_path, mode, n_ctx=128, group_size=16)
    assert got == fresh.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]


# -- 5. misspelled keywords --------------------------------------------------------------------


@pytest.mark.parametrize("typo,meant", [("mod", "mode"), ("grop_size", "group_size"), ("windw", "window"),
                                        ("n_ctxx", "n_ctx")])
def test_misspelled_keyword(tiny_llama_path, typo, meant):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{typo}'; did you mean '{meant}'"):
        LongLlama(str(tiny_llama_path), n_ctx=128, group_size=4, window=16, verbose=False, **{typo: 8})


def test_misspelled_keyword_in_from_pretrained(tmp_path, monkeypatch):
    """Refused before anything is looked up in the hub (offline here: a lookup would fail differently)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TypeError, match="from_pretrained\\(\\) got an unexpected keyword argument 'grop_size'; "
                                        "did you mean 'group_size'"):
        LongLlama.from_pretrained("nobody/nothing", "*.gguf", cache_dir=tmp_path, grop_size=8)


# -- 7. use after close() ----------------------------------------------------------------------


@pytest.mark.parametrize("call", ["llm.create_completion('abc', max_tokens=2)", "llm.tokenize(b'abc')",
                                  "llm.save_state()", "llm.detokenize([5])", "llm('abc')", "llm.n_ctx()",
                                  "llm.create_chat_completion([{'role': 'user', 'content': 'hi'}])"])
def test_use_after_close(tiny_chat_path, call):
    """Each exited with signal 11 before."""
    _expect(f"""
        from selfextend_gguf import LongLlama
        llm = LongLlama({str(tiny_chat_path)!r}, n_ctx=128, verbose=False)
        llm.close()
        llm.close()  # twice is fine
        {call}
        """, "ModelClosedError", "closed LongLlama", "Create a new LongLlama")


# -- 9. smaller gaps ---------------------------------------------------------------------------


def test_shift_mode_refuses_embeddings_past_the_trained_length(tiny_llama_path):
    """Llama.embed decodes a text in one batch, so shift mode never regrouped it: past the trained
    length its embedding was silently the stock model's. Exact mode groups in the graph."""
    import numpy as np

    text = "the lazy dog " * 8  # > 64 tokens
    kw = dict(embedding=True, n_batch=128, n_ubatch=128)
    stock = llama_cpp.Llama(str(tiny_llama_path), n_ctx=128, n_threads=1, verbose=False, **kw)
    shift = _long_llama(tiny_llama_path, "shift", **kw)
    np.testing.assert_array_equal(shift.embed("a short text"), stock.embed("a short text"))  # within L: stock
    for truncate in (True, False):
        with pytest.raises(SelfExtendConfigError, match="mode='exact'"):
            shift.embed(text, truncate=truncate)
    exact = _long_llama(tiny_llama_path, "exact", **kw)
    assert not np.allclose(exact.embed(text), stock.embed(text), atol=1e-3)  # exact mode is extended


def test_home_in_model_path(tiny_llama_path, tmp_path):
    """'~' passed the file check, then llama-cpp failed with a plain ValueError."""
    shutil.copy(tiny_llama_path, tmp_path / "model.gguf")
    r = _run("from selfextend_gguf import LongLlama; print(LongLlama('~/model.gguf', n_ctx=128, verbose=False).n_ctx())",
             HOME=str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "128", r.stderr[-2000:]


def test_numpy_integers_for_n_ctx_and_group_size(tiny_llama_path):
    """Were refused ("n_ctx must be an integer"), though llama_cpp.Llama takes them."""
    import numpy as np

    llm = LongLlama(str(tiny_llama_path), n_ctx=np.int64(128), group_size=np.int32(G), window=np.uint16(W),
                    mode="exact", n_batch=32, n_threads=1, verbose=False)
    ref = _long_llama(tiny_llama_path, "exact")
    assert (llm.n_ctx(), llm.self_extend.group_size, llm.self_extend.window) == (128, G, W)
    assert type(llm.self_extend.group_size) is int and type(llm.n_ctx()) is int
    prompt = "the lazy dog " * 8  # past the trained length: the setting is in use
    assert llm("x " + prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"] == \
        ref("x " + prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    for bad in (np.float64(128.0), np.bool_(True)):
        with pytest.raises(SelfExtendConfigError, match="n_ctx must be an integer"):
            LongLlama(str(tiny_llama_path), n_ctx=bad, verbose=False)


# -- the hypothesis test of create_completion near n_ctx ----------------------------------------

FUZZ = r"""
from hypothesis import given, settings, strategies as st, HealthCheck
from selfextend_gguf import LongLlama

LLMS = {n_ctx: LongLlama(PATH, n_ctx=n_ctx, group_size=4, window=16, mode=MODE, n_batch=32, n_threads=1,
                         verbose=False) for n_ctx in (72, 100, 128)}
LEADS = [3 + b for b in (0xC3, 0xE2, 0xF0)]  # byte tokens that open 2-, 3- and 4-byte characters

@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(alphabet=st.sampled_from("ab 🌙✨é中\n"), min_size=1, max_size=60),
       n_ctx=st.sampled_from(sorted(LLMS)), slack=st.integers(-3, 6),
       max_tokens=st.one_of(st.none(), st.integers(-1, 40)), lead=st.sampled_from([None, *LEADS]),
       stream=st.booleans())
def check(text, n_ctx, slack, max_tokens, lead, stream):
    llm = LLMS[n_ctx]
    tokens = llm.tokenize(text.encode())
    # pad the prompt to n_ctx - slack tokens: the completion starts just short of the context's end
    want = max(1, n_ctx - max(slack, 1))
    prompt = (tokens * (want // len(tokens) + 1))[:want]
    bias = {lead: 25.0} if lead is not None else None
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, logit_bias=bias, stream=stream)
    if stream:
        chunks = list(out)
        finish = chunks[-1]["choices"][0]["finish_reason"]
        "".join(c["choices"][0]["text"] for c in chunks)
    else:
        finish = out["choices"][0]["finish_reason"]
        usage = out["usage"]
        assert usage["total_tokens"] <= n_ctx, usage
        if max_tokens is not None and max_tokens > 0:
            assert usage["completion_tokens"] <= max_tokens, usage
    assert finish in ("stop", "length"), finish
    assert llm.n_tokens <= n_ctx

check()
print("ok")
"""


@pytest.mark.parametrize("mode", ["shift", "exact"])
def test_completion_near_n_ctx_never_raises(tiny_llama_path, mode):
    """Random multi-byte prompts padded to just short of n_ctx, random max_tokens, and a bias towards
    multi-byte lead bytes: create_completion never raises, ends with "stop" or "length", and never
    passes max_tokens or n_ctx. Before the fix, 14 of 60 such prompts raised in exact mode."""
    r = _run(f"PATH, MODE, EXAMPLES = {str(tiny_llama_path)!r}, {mode!r}, 60\n" + FUZZ)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.stdout[-3000:], r.stderr[-3000:])
