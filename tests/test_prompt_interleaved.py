"""scripts/prompt_interleaved.py: methods timed chunk by chunk in one process measure what a method
evaluated alone computes."""

from __future__ import annotations


import numpy as np
import pytest

from script_modules import load_script

METHODS = ["none", "exact@G4W16", "shift@G4W16"]  # trained length 64, n_ctx 128: (64 - 16) * 4 + 16 >= 128


@pytest.fixture(scope="module")
def pi():
    return load_script("prompt_interleaved")


def _build(pi, path, labels):
    # an F32 cache: with F16, exact mode's keys are rounded once more when they are grouped, at a
    # point that depends on the batch split (tests/test_exact_graph.py bounds that separately)
    return pi.build(str(path), labels, 128, 64, flash_attn=False, threads=1, type_k=0, type_v=0)


def test_interleaved_contexts_compute_what_each_method_computes_alone(pi, tiny_llama_path):
    tokens = [int(t) for t in np.random.default_rng(3).integers(3, 259, size=120)]
    llms = _build(pi, tiny_llama_path, METHODS)
    rows, logits = pi.interleave(llms, tokens, chunk=17)
    for llm in llms.values():
        llm.close()
    # every chunk of the prompt, in order, timed for every method
    assert [r["c0"] for r in rows] == list(range(0, 120, 17))
    assert sum(r["n"] for r in rows) == len(tokens)
    assert all(r[label] > 0 for r in rows for label in METHODS)
    # the three methods differ past the trained length, so a context that read another's cache would show
    assert np.abs(logits["exact@G4W16"] - logits["none"]).max() > 1e-2
    for label in METHODS:
        (alone,) = _build(pi, tiny_llama_path, [label]).values()
        alone.eval(tokens)  # one call, batches of 512: no chunk boundaries
        from selfextend_gguf.evaluate.bench import last_logits

        np.testing.assert_allclose(logits[label], last_logits(alone), rtol=1e-4, atol=1e-4, err_msg=label)
        alone.close()


def test_chunks_limit_and_used_context_is_refused(pi, tiny_llama_path):
    tokens = list(range(3, 103))
    llms = _build(pi, tiny_llama_path, METHODS[:2])
    rows, _ = pi.interleave(llms, tokens, chunk=30, n_chunks=2)
    assert [(r["c0"], r["n"]) for r in rows] == [(0, 30), (30, 30)]
    # a second interleave would start where the first stopped: refused, not timed at the wrong positions
    with pytest.raises(ValueError, match="fresh instances"):
        pi.interleave(llms, tokens, chunk=30)
    with pytest.raises(ValueError, match="chunk"):
        pi.interleave(_build(pi, tiny_llama_path, METHODS[:1]), tokens, chunk=0)
    for llm in llms.values():
        llm.close()


def test_a_method_can_have_its_own_ubatch(pi, tiny_llama_path):
    llms = _build(pi, tiny_llama_path, ["none", "exact@G4W16:7", "exact@G4W16"])
    ubatches = [int(llm.context_params.n_ubatch) for llm in llms.values()]
    assert ubatches[1] == 7 and 7 not in (ubatches[0], ubatches[2])  # the others keep their own
    for llm in llms.values():
        llm.close()
    with pytest.raises(ValueError, match="METHOD:N"):
        _build(pi, tiny_llama_path, ["none", "exact@G4W16:x"])


def test_interleaved_decode_computes_what_each_method_computes_alone(pi, tiny_llama_path):
    """After an interleaved prompt, the models decode the same tokens in turn, round after round;
    each ends where a model of its method that evaluated the same tokens alone ends."""
    from selfextend_gguf.evaluate.bench import last_logits

    prompt = [int(t) for t in np.random.default_rng(4).integers(3, 259, size=70)]
    step = [11, 23, 35, 47, 59]
    llms = _build(pi, tiny_llama_path, METHODS)
    pi.interleave(llms, prompt, chunk=32)
    rows = pi.decode_interleaved(llms, step, rounds=3)
    assert [(r["p0"], r["n"]) for r in rows] == [(70, 5), (75, 5), (80, 5)]
    assert all(r[label] > 0 for r in rows for label in METHODS)
    assert all(llm.n_tokens == 85 for llm in llms.values())
    logits = {label: last_logits(llm) for label, llm in llms.items()}
    # the contexts are past the trained length (64), where the methods differ
    assert np.abs(logits["exact@G4W16"] - logits["none"]).max() > 1e-2
    for label, llm in llms.items():
        llm.close()
        (alone,) = _build(pi, tiny_llama_path, [label]).values()
        alone.eval(prompt + step * 3)
        np.testing.assert_allclose(logits[label], last_logits(alone), rtol=1e-4, atol=1e-4, err_msg=label)
        alone.close()


def test_interleaved_decode_is_refused_past_the_context(pi, tiny_llama_path):
    llms = _build(pi, tiny_llama_path, METHODS[:2])
    pi.interleave(llms, list(range(3, 103)), chunk=50)
    with pytest.raises(ValueError, match="context left"):
        pi.decode_interleaved(llms, [5] * 10, rounds=3)  # 100 + 30 > 128
    with pytest.raises(ValueError, match="at least one round"):
        pi.decode_interleaved(llms, [5], rounds=0)
    assert all(llm.n_tokens == 100 for llm in llms.values())  # refused before any token was decoded
    for llm in llms.values():
        llm.close()


def test_summary_ratios_are_baseline_seconds_over_method_seconds(pi):
    rows = [{"c0": 0, "n": 10, "none": 1.0, "exact": 2.0}, {"c0": 10, "n": 10, "none": 3.0, "exact": 2.0}]
    s = pi.summarize(rows, ["none", "exact"])
    assert s["tokens"] == 20 and s["seconds"] == {"none": 4.0, "exact": 4.0}
    assert s["tps"] == {"none": 5.0, "exact": 5.0} and s["x"] == {"exact": 1.0}
    assert s["x_chunks"] == [{"exact": 0.5}, {"exact": 1.5}]
    assert s["x_median"] == {"exact": 1.0}
    rows.append({"c0": 20, "n": 10, "none": 1.0, "exact": 0.5})
    assert pi.summarize(rows, ["none", "exact"])["x_median"] == {"exact": 1.5}


def test_from_state_every_round_computes_the_same_chunk(pi, tiny_llama_path):
    """--from-state: each round loads the state saved after the fill and evaluates the same chunk,
    so every round's logits equal each other and a fresh run of the fill and the chunk (exact mode's
    state included: the keys grouped on the way are restored as saved)."""
    from selfextend_gguf.evaluate.bench import last_logits

    tokens = [int(t) for t in np.random.default_rng(5).integers(3, 259, size=110)]
    labels = METHODS[:2]
    llms = _build(pi, tiny_llama_path, labels)
    rows, logits = pi.repeat_from_state(llms, tokens, n_fill=90, chunk=15, rounds=3)
    for llm in llms.values():
        llm.close()
    assert [(r["c0"], r["n"]) for r in rows] == [(90, 15)] * 3
    assert all(r[label] > 0 for r in rows for label in labels)
    for label in labels:
        (alone,) = _build(pi, tiny_llama_path, [label]).values()
        alone.eval(tokens[:105])
        expected = last_logits(alone)
        alone.close()
        assert len(logits[label]) == 3
        for got in logits[label]:
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=label)
    # a fill and chunk past the tokens, or a used context, are refused
    llms = _build(pi, tiny_llama_path, labels[:1])
    with pytest.raises(ValueError, match="n_fill"):
        pi.repeat_from_state(llms, tokens, n_fill=100, chunk=20, rounds=1)
    pi.repeat_from_state(llms, tokens, n_fill=10, chunk=5, rounds=1)
    with pytest.raises(ValueError, match="fresh instances"):
        pi.repeat_from_state(llms, tokens, n_fill=10, chunk=5, rounds=1)
    for llm in llms.values():
        llm.close()
