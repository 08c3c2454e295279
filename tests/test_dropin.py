"""LongLlama as a drop-in llama_cpp.Llama: the high-level API with self-extend on, in both modes.

Tiny models for exactness: prompts 2-3x past the trained context (64 tokens) must give the
same text whichever way they are evaluated (streamed or not, reused prefix or fresh), must
differ from the stock library, and their logprobs must equal the NumPy oracle's. Prompts
shorter than the window must give the stock library's results. SmolLM2 checks real use.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_oracle as no
from selfextend_gguf import LongLlama, PromptCancelled, load_llama_cpp

llama_cpp = load_llama_cpp()

MODES = ("shift", "exact")
G, W = 4, 16  # reach on a 64-token model: (64 - 16) * 4 + 16 = 208
N_CTX = 200
F32 = 0
LONG_TEXT = ("the quick brown fox jumps over the lazy dog, then runs far away into the woods. " * 2)[:150]


@pytest.fixture
def chat_model(tiny_chat_path):
    """tiny llama (trained context 64) that carries a chat template in its GGUF metadata."""
    return tiny_chat_path


def _opts(**kwargs) -> dict:
    base = dict(n_ctx=N_CTX, n_batch=32, n_ubatch=32, logits_all=True, type_k=F32, type_v=F32,
                flash_attn=False, n_threads=1, n_threads_batch=1, verbose=False)
    return {**base, **kwargs}


def _long(path, mode, *, group_size=G, window=W, **kwargs) -> LongLlama:
    return LongLlama(str(path), group_size=group_size, window=window, mode=mode, **_opts(**kwargs))


#: random weights emit any byte; keep the text ASCII (byte tokens 0x80..0xFF are ids 131..258) so that
#: streamed text, which llama-cpp-python cuts at UTF-8 boundaries differently, compares exactly
ASCII_ONLY = {i: -1e9 for i in range(3 + 0x80, 3 + 0x100)}


def _greedy(**kwargs) -> dict:
    return dict(temperature=0.0, top_k=1, seed=0, logit_bias=ASCII_ONLY, **kwargs)


def _positions(mode, n):
    return (no.positions_shift if mode == "shift" else no.positions_exact)(n, G, W)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# -- completions past the trained context ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_streaming_equals_non_streaming_and_fresh(chat_model, mode):
    """A ~150-token prompt: streamed text == non-streamed text == a fresh instance's text."""
    llm = _long(chat_model, mode)
    n_prompt = len(llm.tokenize(LONG_TEXT.encode()))
    assert 64 < n_prompt < N_CTX - 30
    llm.create_completion("an unrelated earlier prompt", max_tokens=4, **_greedy())  # scribble on the cache
    whole = llm.create_completion(LONG_TEXT, max_tokens=24, **_greedy())
    chunks = list(llm.create_completion(LONG_TEXT, max_tokens=24, stream=True, **_greedy()))
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert whole["choices"][0]["text"] and streamed == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert whole["usage"]["prompt_tokens"] == n_prompt
    fresh = _long(chat_model, mode)
    assert fresh.create_completion(LONG_TEXT, max_tokens=24, **_greedy())["choices"][0]["text"] == streamed
    # __call__ is create_completion
    assert llm(LONG_TEXT, max_tokens=24, **_greedy())["choices"][0]["text"] == streamed
    llm.close()
    fresh.close()


@pytest.mark.parametrize("mode", MODES)
def test_logprobs_match_oracle_and_differ_from_stock(chat_model, mode):
    """Generated tokens' logprobs equal the oracle's self-extended forward pass, not the stock one."""
    llm = _long(chat_model, mode)
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, 259, size=140)]
    out = llm.create_completion(prompt, max_tokens=6, logprobs=3, **_greedy())
    lp = out["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 6
    # llm.input_ids holds prompt + generated tokens (the last one sampled but not evaluated)
    seq = [int(t) for t in llm.input_ids[: llm.n_tokens]]
    assert seq[:140] == prompt
    last = np.array(llm.scores[llm.n_tokens - 1])
    last[list(ASCII_ONLY)] = -np.inf
    gen_ids = seq[140:] + [int(np.argmax(last))]  # the greedy pick that was sampled but not evaluated
    assert len(gen_ids) == 6 and llm.detokenize(gen_ids).decode() == out["choices"][0]["text"]
    n = len(seq)
    model = no.load_model(chat_model)
    ref = _log_softmax(no.forward(model, seq, *_positions(mode, n)))[139:n]
    ref_lp = [ref[i, t] for i, t in enumerate(gen_ids)]
    np.testing.assert_allclose(lp["token_logprobs"], ref_lp, atol=2e-4)
    assert len(lp["top_logprobs"]) == 6 and all(lp["top_logprobs"])
    stock = _log_softmax(no.forward(model, seq))[139:n]
    assert max(abs(stock[i, t] - ref[i, t]) for i, t in enumerate(gen_ids)) > 1e-2
    llm.close()


@pytest.mark.parametrize("mode", MODES)
def test_short_prompt_is_the_stock_library(chat_model, mode):
    """Shorter than W (window 32 here): text and logprobs equal llama_cpp.Llama's."""
    prompt = "hello there, general"
    kwargs = dict(max_tokens=8, logprobs=2, echo=True, **_greedy())
    stock = llama_cpp.Llama(str(chat_model), **_opts(n_ctx=96))
    ref = stock.create_completion(prompt, **kwargs)["choices"][0]
    llm = _long(chat_model, mode, group_size=2, window=32, n_ctx=96)
    got = llm.create_completion(prompt, **kwargs)["choices"][0]
    assert len(llm.tokenize(prompt.encode())) + 8 < 32
    assert got["text"] == ref["text"]
    # echo: the prompt's logprobs too
    np.testing.assert_allclose(np.array(got["logprobs"]["token_logprobs"][1:], dtype=float),
                               np.array(ref["logprobs"]["token_logprobs"][1:], dtype=float),
                               atol=1e-5 if mode == "exact" else 0)
    stock.close()
    llm.close()


@pytest.mark.parametrize("mode", MODES)
def test_stop_sequences(chat_model, mode):
    """A stop string cuts the text before its first occurrence, streamed or not."""
    llm = _long(chat_model, mode)
    full = llm.create_completion(LONG_TEXT, max_tokens=24, **_greedy())["choices"][0]["text"]
    assert len(full) >= 8, full
    stop = full[5:8]
    cut = full[: full.index(stop)]
    out = llm.create_completion(LONG_TEXT, max_tokens=24, stop=[stop], **_greedy())["choices"][0]
    assert out["text"] == cut and out["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["text"]
                       for c in llm.create_completion(LONG_TEXT, max_tokens=24, stop=stop, stream=True, **_greedy()))
    assert streamed == cut
    llm.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("logits_all", [True, False])
def test_generation_runs_to_n_ctx_cleanly(chat_model, mode, logits_all):
    """max_tokens=None generates until n_ctx and stops with "length"; every token is kept.

    llama.cpp pads the cache to 256 cells; llama_cpp.Llama sizes its buffers by the requested
    n_ctx but runs on to 256 (ValueError with logits_all, silently dropped tokens without).
    """
    llm = _long(chat_model, mode, logits_all=logits_all)
    assert llm.n_ctx() == N_CTX
    out = llm.create_completion(LONG_TEXT, max_tokens=None, **_greedy())
    assert out["usage"]["total_tokens"] == N_CTX and out["choices"][0]["finish_reason"] == "length"
    prompt = llm.tokenize(LONG_TEXT.encode())
    assert llm.input_ids[: len(prompt)].tolist() == prompt and llm.n_tokens == N_CTX - 1
    kept = llm.detokenize(llm.input_ids[len(prompt) : llm.n_tokens].tolist()).decode()
    assert len(kept) > 20 and out["choices"][0]["text"].startswith(kept)  # the last token is sampled, not evaluated
    llm.close()


# -- chat ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_chat_completion_uses_the_models_template(chat_model, mode):
    """create_chat_completion formats with the GGUF's template; streaming gives the same reply."""
    llm = _long(chat_model, mode)
    assert llm.chat_format == "chat_template.default"
    messages = [{"role": "system", "content": LONG_TEXT[:60]},
                {"role": "user", "content": LONG_TEXT[60:120]}]
    reply = llm.create_chat_completion(messages, max_tokens=16, **_greedy())
    text = reply["choices"][0]["message"]["content"]
    assert reply["usage"]["prompt_tokens"] > 64  # past the trained context
    # the same as completing the template's rendering by hand
    rendered = "".join(f"### {m['role']}: {m['content']}\n" for m in messages) + "### assistant:"
    by_hand = llm.create_completion(rendered, max_tokens=16, stop=["</s>"], **_greedy())
    assert by_hand["usage"]["prompt_tokens"] == reply["usage"]["prompt_tokens"]
    assert text == by_hand["choices"][0]["text"]
    deltas = [c["choices"][0]["delta"].get("content") or ""
              for c in llm.create_chat_completion(messages, max_tokens=16, stream=True, **_greedy())]
    assert "".join(deltas) == text
    llm.close()


# -- tokenizer ----------------------------------------------------------------------------------


def test_tokenize_detokenize_round_trip(chat_model):
    """Text -> tokens -> the same text, and the same tokens as llama_cpp.Llama."""
    llm = _long(chat_model, "shift")
    stock = llama_cpp.Llama(str(chat_model), **_opts())
    for text in ["", "abc", " lead", "two  spaces", LONG_TEXT, "naïve café ✓"]:
        toks = llm.tokenize(text.encode())
        assert toks[0] == llm.token_bos() and toks == stock.tokenize(text.encode())
        assert llm.detokenize(toks).decode() == text
        plain = llm.tokenize(text.encode(), add_bos=False)
        assert llm.detokenize(plain) == stock.detokenize(plain)
    llm.close()
    stock.close()


# -- progress -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_progress_callback_counts(chat_model, mode):
    """Called per batch with monotone counts that end at the prompt length; reused prefixes count."""
    calls = []
    llm = _long(chat_model, mode, progress_callback=lambda done, total: calls.append((done, total)))
    n_prompt = len(llm.tokenize(LONG_TEXT.encode()))
    llm.create_completion(LONG_TEXT, max_tokens=3, **_greedy())
    dones = [d for d, _ in calls]
    assert len(calls) >= n_prompt // 32 and all(t == n_prompt for _, t in calls)
    assert dones == sorted(set(dones)) and dones[-1] == n_prompt
    calls.clear()
    llm.create_completion(LONG_TEXT + " more words", max_tokens=3, **_greedy())  # reuses the prefix
    n2 = len(llm.tokenize((LONG_TEXT + " more words").encode()))
    assert calls and calls[-1] == (n2, n2) and calls[0][0] > n_prompt // 2
    llm.close()


@pytest.mark.parametrize("mode", MODES)
def test_progress_callback_can_cancel(chat_model, mode):
    """False stops between batches; the cache stays consistent: the next call equals a fresh one."""
    llm = _long(chat_model, mode)
    llm.progress_callback = lambda done, total: done < 70
    with pytest.raises(PromptCancelled, match="cancelled by progress_callback"):
        llm.create_completion(LONG_TEXT, max_tokens=8, **_greedy())
    assert 70 <= llm.n_tokens < len(llm.tokenize(LONG_TEXT.encode()))
    llm.progress_callback = None
    again = llm.create_completion(LONG_TEXT, max_tokens=8, **_greedy())["choices"][0]["text"]
    fresh = _long(chat_model, mode)
    assert again == fresh.create_completion(LONG_TEXT, max_tokens=8, **_greedy())["choices"][0]["text"]
    llm.close()
    fresh.close()


def test_progress_callback_must_be_callable(chat_model):
    with pytest.raises(TypeError, match="progress_callback must be a callable"):
        _long(chat_model, "shift", progress_callback=5)


# -- SmolLM2 -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_smollm2_chat_streaming(mode):
    """Real use: the model's own chat template, n_ctx past the trained 8192 (G chosen), a short chat.

    Shorter than W, so the reply equals the stock library's; streamed equals non-streamed.
    """
    from selfextend_gguf import default_model_path

    path = str(default_model_path())
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    kwargs = dict(n_ctx=12288, n_threads=2, verbose=False)
    stock = llama_cpp.Llama(path, **kwargs)
    ref = stock.create_chat_completion(messages, max_tokens=12, **_greedy())["choices"][0]["message"]["content"]
    stock.close()
    llm = LongLlama(path, mode=mode, **kwargs)
    assert llm.self_extend.group_size > 1 and "chat_template" in llm.chat_format
    text = llm.create_chat_completion(messages, max_tokens=12, **_greedy())["choices"][0]["message"]["content"]
    assert text == ref and "Paris" in text
    deltas = [c["choices"][0]["delta"].get("content") or ""
              for c in llm.create_chat_completion(messages, max_tokens=12, stream=True, **_greedy())]
    assert "".join(deltas) == text
    llm.close()
