"""Units of the evaluation package: method parsing and construction, bucketing, NLL, text source."""

from __future__ import annotations

import math
import mmap

import numpy as np
import pytest

from selfextend_gguf import load_llama_cpp
from selfextend_gguf.errors import EvaluationError, SelfExtendConfigError
from selfextend_gguf.evaluate import methods as me
from selfextend_gguf.evaluate import perplexity as pp
from selfextend_gguf.evaluate import text_source as ts

llama_cpp = load_llama_cpp()
KW = dict(n_threads=1, n_threads_batch=1, verbose=False, flash_attn=False)


# -- methods --------------------------------------------------------------------------------------


def test_parse_method_forms():
    assert me.parse_method("none") == me.MethodSpec("none")
    assert me.parse_method("Exact@auto") == me.MethodSpec("exact")
    spec = me.parse_method("shift@G4W1024")
    assert (spec.kind, spec.group_size, spec.window, spec.label) == ("shift", 4, 1024, "shift@G4W1024")


@pytest.mark.parametrize("bad, words", [("rope", "unknown method"), ("yarn@G2W8", "take a G/W setting"),
                                        ("exact@G4", "G4W1024"), ("exact@W8G2", "G4W1024")])
def test_parse_method_errors_name_the_fix(bad, words):
    with pytest.raises(SelfExtendConfigError, match=words):
        me.parse_method(bad)


def test_expand_methods_adds_grid_to_self_extend_kinds_only():
    specs = me.expand_methods(["none", "exact", "exact"], me.parse_grid(["2:8", "4:16"]))
    assert [s.label for s in specs] == ["none", "exact", "exact@G2W8", "exact@G4W16"]
    with pytest.raises(SelfExtendConfigError, match="G:W"):
        me.parse_grid(["4x16"])


def test_resolve_rope_parameters():
    lin = me.resolve(me.MethodSpec("linear"), 256, 64)
    assert lin.llama_kwargs == {"rope_freq_scale": 0.25, "rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR}
    yarn = me.resolve(me.MethodSpec("yarn"), 128, 64)
    assert yarn.llama_kwargs == {"rope_freq_scale": 0.5, "rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                                 "yarn_orig_ctx": 64}
    assert yarn.setting == "x2.00"
    # inside the trained length they leave the model alone
    assert me.resolve(me.MethodSpec("linear"), 64, 64).llama_kwargs == {}
    assert me.resolve(me.MethodSpec("none"), 256, 64).llama_kwargs == {}


def test_resolve_self_extend_auto_and_fixed():
    auto = me.resolve(me.MethodSpec("exact"), 32768, 8192)
    assert auto.auto and auto.setting == "G=5 W=2048 (auto)"
    assert auto.describe()["group_size"] == 5
    fixed = me.resolve(me.parse_method("shift@G4W1024"), 16384, 8192)
    assert not fixed.auto and fixed.setting == "G=4 W=1024"
    with pytest.raises(SelfExtendConfigError, match="beyond what"):
        me.resolve(me.parse_method("exact@G2W1024"), 32768, 8192)


def test_built_methods_carry_their_rope_parameters(tiny_llama_path):
    """linear/yarn reach llama.cpp's context parameters; shift/exact are LongLlama in that mode."""
    from selfextend_gguf import LongLlama

    built = {}
    for kind in me.KINDS:
        m = me.resolve(me.MethodSpec(kind), 128, 64)
        built[kind] = m.build(str(tiny_llama_path), **KW)
        assert built[kind].context_params.n_ctx == 128
    cp = {k: v.context_params for k, v in built.items()}
    assert cp["linear"].rope_scaling_type == llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR
    assert cp["linear"].rope_freq_scale == pytest.approx(0.5)
    assert cp["yarn"].rope_scaling_type == llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
    assert cp["yarn"].rope_freq_scale == pytest.approx(0.5) and cp["yarn"].yarn_orig_ctx == 64
    assert cp["none"].rope_freq_scale == 0.0  # 0 = from the model
    from selfextend_gguf.rpc import RpcLlama

    # the stock class (RpcLlama only adds rpc_servers; without them it is llama_cpp.Llama)
    assert type(built["none"]) is RpcLlama and built["none"].model_params.devices is None
    assert isinstance(built["exact"], LongLlama) and built["exact"].self_extend.mode == "exact"
    assert isinstance(built["shift"], LongLlama) and built["shift"].self_extend.mode == "shift"
    for llm in built.values():
        llm.close()


def _logits(path, kind, n_ctx, tokens):
    m = me.resolve(me.MethodSpec(kind), n_ctx, 64)
    llm = m.build(str(path), logits_all=True, **KW)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def test_linear_and_yarn_change_logits_past_trained_length(tiny_llama_path):
    tokens = [int(t) for t in np.random.default_rng(5).integers(3, 259, size=120)]
    none, lin, yarn = (_logits(tiny_llama_path, k, 128, tokens) for k in ("none", "linear", "yarn"))
    for other in (lin, yarn):
        assert np.abs(other - none).max() > 1e-2
    assert np.abs(lin - yarn).max() > 1e-3  # and they are not the same method
    # at n_ctx <= trained length they are the unmodified model
    assert np.array_equal(_logits(tiny_llama_path, "linear", 64, tokens[:60]), _logits(tiny_llama_path, "none", 64, tokens[:60]))


# -- perplexity pieces ------------------------------------------------------------------------------


def test_buckets_and_split_means():
    nll = np.arange(10, dtype=np.float64)  # positions 1..10
    b = pp.buckets(nll, 4)
    assert [(x["start"], x["end"], x["tokens"]) for x in b] == [(0, 4, 3), (4, 8, 4), (8, 12, 3)]
    assert b[0]["mean_nll"] == pytest.approx(1.0) and b[0]["ppl"] == pytest.approx(math.e)
    assert b[2]["mean_nll"] == pytest.approx(8.0)
    s = pp.split_means(nll, 6)  # inside: positions 1..5 -> nll 0..4; beyond: 6..10 -> 5..9
    assert s["ppl_inside"] == pytest.approx(math.exp(2.0)) and s["ppl_beyond"] == pytest.approx(math.exp(7.0))
    assert (s["tokens_inside"], s["tokens_beyond"]) == (5, 5)
    assert pp.split_means(nll, 100)["ppl_beyond"] is None
    with pytest.raises(ValueError):
        pp.buckets(nll, 0)


def test_next_token_nll_is_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 50)).astype(np.float32) * 5
    targets = rng.integers(0, 50, size=7)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    assert np.allclose(pp.next_token_nll(logits, targets), -np.log(p[np.arange(7), targets]), atol=1e-5)


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="no madvise here")
def test_releasable_scores_give_pages_back():
    s = pp._ReleasableScores(64, 4096)  # one row = 16 KiB = whole pages
    s.array[:] = 1.0
    s.release(0, 32)
    assert s.array[:32].sum() == 0 and s.array[32:].min() == 1.0


@pytest.mark.parametrize("mode", [None, "shift", "exact"])
def test_token_nlls_equal_numpy_softmax_of_llama_logits(tiny_llama_path, mode):
    """One chunked pass gives the NLLs that a NumPy softmax over one plain eval's logits gives."""
    from selfextend_gguf import LongLlama

    tokens = [1] + [int(t) for t in np.random.default_rng(3).integers(3, 259, size=150)]
    # F32 caches: exact mode re-rotates a key in place when it leaves the window, so with an F16 cache the
    # rounding of a key depends on where the ubatches split (as after a K-shift in the stock library), which
    # is not what this test is about
    kw = dict(n_ctx=160, logits_all=True, n_batch=64, n_ubatch=64, type_k=0, type_v=0, **KW)
    make = (lambda: llama_cpp.Llama(model_path=str(tiny_llama_path), **kw)) if mode is None else \
        (lambda: LongLlama(tiny_llama_path, mode=mode, group_size=4, window=16, **kw))
    ref = make()
    ref.eval(tokens)
    logits = np.array(ref.scores[: len(tokens)], dtype=np.float64)
    ref.close()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    expected = -np.log(probs[np.arange(len(tokens) - 1), tokens[1:]])

    llm = make()
    got = pp.token_nlls(llm, tokens, chunk=37)  # chunks that cross batch and shift-block boundaries
    assert got.shape == expected.shape
    # F32 rounding: other ubatch sizes (37 against 64) take other kernel paths; in exact mode the NLLs
    # (about 5) then differ by up to 1.1e-4 on an AVX2-only CPU (within 1e-5 on the AVX-512 Xeon CI used before)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)
    summary = pp.split_means(got, 64)
    assert summary["ppl"] == pytest.approx(math.exp(expected.mean()), rel=1e-4)
    assert 1 < summary["ppl"] < 1e6
    with pytest.raises(ValueError, match="n_ctx"):
        pp.token_nlls(llm, tokens * 2)
    llm.close()


# -- text source --------------------------------------------------------------------------------------


def test_strip_gutenberg():
    raw = ("\ufeffProject Gutenberg's Book\nlicence\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
           "Chapter 1\nIt was a dark night.\n--(THE END)--\n[A: typo]\n    note\n\n"
           "End of Project Gutenberg's Book\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence text\n")
    assert ts.strip_gutenberg(raw) == "Chapter 1\nIt was a dark night.\n--(THE END)--\n"


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFEXTEND_GGUF_CACHE", str(tmp_path))
    assert ts.cache_dir() == tmp_path / "text"
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / ts.TEXT_FILE).write_text("cached")
    assert ts.default_text_path() == tmp_path / "text" / ts.TEXT_FILE  # no download when cached


def test_text_download_failure_names_the_fix(monkeypatch, tmp_path):
    import subprocess

    monkeypatch.setenv("SELFEXTEND_GGUF_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(EvaluationError, match="--text PATH") as e:
        ts.default_text_path()
    assert "no network" in str(e.value)


@pytest.mark.slow
def test_default_text_is_long_english_prose(tmp_path, monkeypatch):
    """Downloads the sentencepiece sdist (pip, a few seconds): Botchan, >= 40k SmolLM2 tokens."""
    from selfextend_gguf import default_model_path

    monkeypatch.setenv("SELFEXTEND_GGUF_CACHE", str(tmp_path))
    text = ts.default_text_path().read_text()
    assert "BOTCHAN" in text[:500]
    assert "Kiyo" in text and "*** START" not in text and "gutenberg.org" not in text.lower()
    vocab = llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    assert len(vocab.tokenize(text.encode())) >= 40_000
    vocab.close()


def test_unknown_text_name_is_refused():
    with pytest.raises(EvaluationError, match="botchan, alice"):
        ts.text_path("moby")


@pytest.mark.slow
def test_alice_is_long_english_prose(tmp_path, monkeypatch):
    """Downloads the brotli sdist (pip, 7 MB): Alice in Wonderland, >= 34k SmolLM2 tokens, LF line ends."""
    from selfextend_gguf import default_model_path

    monkeypatch.setenv("SELFEXTEND_GGUF_CACHE", str(tmp_path))
    text = ts.text_path("alice").read_text()
    assert "ALICE'S ADVENTURES IN WONDERLAND" in text[:500] and "Mock Turtle" in text and "\r" not in text
    vocab = llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    assert len(vocab.tokenize(text.encode())) >= 34_000
    vocab.close()


def test_buffer_sizes_takes_the_largest_reservation():
    """llama_set_self_extend makes the context reserve again at the next decode: the size is the
    largest reservation (summed over its backends), not the first one, and not all of them added."""
    from selfextend_gguf.evaluate.bench import buffer_sizes

    log = ("llama_kv_cache:        CPU KV buffer size =    90.00 MiB\n"
           "sched_reserve: reserving ...\n"
           "sched_reserve:        CPU compute buffer size =    99.38 MiB\n"
           "sched_reserve:      CUDA0 compute buffer size =    10.00 MiB\n"
           "llama_set_self_extend: exact self-extend on: group_size = 4, window = 1024\n"
           "sched_reserve: reserving ...\n"
           "sched_reserve:        CPU compute buffer size =   223.75 MiB\n"
           "sched_reserve:      CUDA0 compute buffer size =    20.00 MiB\n")
    assert buffer_sizes(log) == (90.0, 243.75)
    assert buffer_sizes(log.split("llama_set_self_extend")[0]) == (90.0, 109.38)


def test_random_tokens_avoid_the_lowest_and_last_ids_and_follow_the_seed():
    """The timed prompts of ``bench`` and scripts/prompt_interleaved.py: no control token (the lowest
    ids), never the last id, the same list for the same seed and another for another seed."""
    from selfextend_gguf.evaluate.bench import random_tokens

    tokens = random_tokens(49152, 5000, seed=1)
    assert len(tokens) == 5000 and all(type(t) is int for t in tokens)
    assert min(tokens) >= 100 and max(tokens) < 49151
    assert tokens == random_tokens(49152, 5000, seed=1) != random_tokens(49152, 5000, seed=2)
    small = random_tokens(200, 2000)  # a tiny vocabulary keeps its top three quarters
    assert min(small) >= 50 and max(small) < 199 and len(set(small)) > 100
