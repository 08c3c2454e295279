"""``selfextend-gguf needle``: the haystack, the Wilson interval, context reuse and the command.

The reuse tests are the ones the numbers rest on: a question asked of the cached context must get
the same logits and the same answer as its whole prompt evaluated from an empty cache, in stock,
shift (whose block rule re-evaluates the newest block) and exact mode.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from selfextend_gguf import LongLlama
from selfextend_gguf.cli import main
from selfextend_gguf.errors import EvaluationError
from selfextend_gguf.evaluate import haystack as hs
from selfextend_gguf.evaluate import needle_eval as ne
from selfextend_gguf.evaluate.methods import MethodSpec, resolve
from tiny_models import write_tiny_model

F32 = 0
COMMON = ["--threads", "1", "--no-progress"]


# -- the interval --------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                          (20, 40, 0.3520, 0.6480)])
def test_wilson_interval_reference_values(k, n, low, high):
    lo, hi = ne.wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize("k,n", [(3, 7), (17, 40), (38, 40), (120, 200)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    """Wilson's bounds are the p where |p_hat - p| = z * sqrt(p (1 - p) / n): checked on that definition."""
    z = 1.959963984540054
    p_hat = k / n
    for p in ne.wilson_interval(k, n):
        assert abs(p_hat - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n), rel=1e-9)


def test_wilson_interval_without_trials():
    assert ne.wilson_interval(0, 0) == (0.0, 1.0)


# -- the haystack --------------------------------------------------------------------------------

PROSE = ("It was a cold morning. The river ran past the mill! Nobody came?\n\n"
         "A second paragraph,\nwrapped over lines. It ends here.\n") * 40


def _bytes_tokenize(text: str):
    return list(text.encode("utf-8"))


def test_sentences_unwrap_paragraphs():
    out = hs.sentences("One. Two!\n\nThree,\nwrapped? Four.")
    assert out == ["\n\nOne.", " Two!", "\n\nThree, wrapped?", " Four."]


def test_haystack_places_every_needle_once_at_spread_depths():
    prose = hs.tokenize_sentences(PROSE, _bytes_tokenize)
    h = hs.build(prose, _bytes_tokenize, n_tokens=3000, needles=10, max_tokens=8, rng=random.Random(3), bos=[1])
    longest_question = max(len(q) for _, q in h.questions)
    assert len(h.tokens) + longest_question + 8 <= 3000
    assert len(h.tokens) > 3000 - longest_question - 8 - 60  # filled up to about one sentence
    assert [n.position for n in h.needles] == sorted(n.position for n in h.needles)
    for needle in h.needles:
        piece = _bytes_tokenize(hs.NEEDLE.format(label=needle.label, value=needle.value))
        assert h.tokens[needle.position:needle.position + len(piece)] == piece
        assert bytes(h.tokens).count(needle.value.encode()) == 1
    # one needle in each tenth of the context, give or take a sentence
    bins = [min(9, int(n.depth * 10)) for n in h.needles]
    assert sorted(bins) == bins and len(set(bins)) >= 9
    assert sorted(n.label for n, _ in h.questions) == sorted(n.label for n in h.needles)
    words = [w for n in h.needles for w in n.label.split()[1:]]
    assert len(words) == len(set(words))  # no two labels share a word
    again = hs.build(prose, _bytes_tokenize, n_tokens=3000, needles=10, max_tokens=8, rng=random.Random(3), bos=[1])
    assert again == h  # the same context for every method


def test_haystack_refuses_a_text_too_short_and_too_many_needles():
    prose = hs.tokenize_sentences(PROSE, _bytes_tokenize)
    with pytest.raises(EvaluationError, match="longer --text"):
        hs.build(prose, _bytes_tokenize, n_tokens=10 ** 6, needles=4, max_tokens=8, rng=random.Random(0), bos=[])
    with pytest.raises(EvaluationError, match="--needles"):
        hs.build(prose, _bytes_tokenize, n_tokens=3000, needles=hs.MAX_NEEDLES + 1, max_tokens=8,
                 rng=random.Random(0), bos=[])
    with pytest.raises(EvaluationError, match="too short"):
        hs.build(prose, _bytes_tokenize, n_tokens=400, needles=4, max_tokens=8, rng=random.Random(0), bos=[])


def test_sentencepiece_pieces_get_no_extra_spaces(tmp_path):
    """A SentencePiece vocabulary puts a space before every text it tokenizes: a context built from
    pieces reads as the text itself, with no doubled space and no space before a paragraph break."""
    import llama_cpp

    model = write_tiny_model(tmp_path / "spm.gguf", arch="llama", context_length=128, tokenizer="spm", seed=1)
    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    raw = lambda s: vocab.tokenize(s.encode(), add_bos=False, special=False)  # noqa: E731
    assert len(raw(" a")) > len(raw("a"))  # the premise: a doubled space without the fix
    tokenize = hs.continuation_tokenizer(raw)
    h = hs.build(hs.tokenize_sentences(PROSE, tokenize), tokenize, n_tokens=3000, needles=4, max_tokens=8,
                 rng=random.Random(1), bos=[])
    text = vocab.detokenize(h.tokens).decode()
    vocab.close()
    assert "  " not in text.lstrip() and " \n" not in text
    assert "mill! Nobody came?\n\nA second paragraph, wrapped over lines." in text
    assert hs.continuation_tokenizer(_bytes_tokenize) is _bytes_tokenize  # byte-level: left alone


def test_summary_and_depth_bins():
    rows = [{"method": "m", "length": 8, "setting": "-", "depth": d, "found": f}
            for d, f in [(0.05, True), (0.1, False), (0.5, True), (0.99, True)]]
    summary = ne.summarize(rows)
    total = next(s for s in summary if s["depth"] is None)
    assert (total["found"], total["total"], total["accuracy"]) == (3, 4, 0.75)
    assert (total["ci_low"], total["ci_high"]) == tuple(round(x, 4) for x in ne.wilson_interval(3, 4))
    assert {s["depth"]: s["total"] for s in summary if s["depth"] is not None} == {0.1: 2, 0.5: 1, 0.9: 1}


def test_stock_methods_are_recognised():
    """At n_ctx <= L linear, YaRN and automatic self-extend are the stock model; beyond L they are not."""
    assert all(ne.is_stock(resolve(MethodSpec(k), 128, 128)) for k in ("none", "linear", "yarn", "shift", "exact"))
    assert ne.is_stock(resolve(MethodSpec("none"), 512, 128))
    assert not any(ne.is_stock(resolve(MethodSpec(k), 512, 128)) for k in ("linear", "yarn", "shift", "exact"))
    assert not ne.is_stock(resolve(MethodSpec("exact", 2, 32), 128, 128))


# -- reuse against evaluation from scratch -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny128(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("needle") / "llama128.gguf", arch="llama",
                                context_length=128, seed=7))


def _random_haystack(seed: int, n_context: int, n_questions: int) -> hs.Haystack:
    rng = np.random.default_rng(seed)
    tokens = [1] + [int(t) for t in rng.integers(3, 259, size=n_context - 1)]
    needles = [hs.Needle(f"label {i}", "1234567", int(p), p / n_context)
               for i, p in enumerate(sorted(rng.choice(n_context, n_questions, replace=False)))]
    questions = [(n, [int(t) for t in rng.integers(3, 259, size=int(rng.integers(5, 20)))]) for n in needles]
    return hs.Haystack("random", 0, tokens, needles, questions)


@pytest.mark.parametrize("mode", [None, "shift", "exact"])
def test_questions_reusing_the_context_equal_questions_from_scratch(tiny128, mode, monkeypatch):
    """Each question's last-prompt-token logits and greedy answer, reusing the cached context, equal
    those of its whole prompt evaluated from an empty cache. The context (333 tokens) ends inside a
    shift-mode block, so shift mode's reuse re-evaluates part of a block."""
    kw = dict(n_ctx=400, n_batch=64, n_ubatch=64, logits_all=True, type_k=F32, type_v=F32, n_threads=1,
              n_threads_batch=1, verbose=False)
    if mode is None:
        import llama_cpp

        llm = llama_cpp.Llama(tiny128, **kw)
    else:
        llm = LongLlama(tiny128, mode=mode, group_size=4, window=32, **kw)
    haystack = _random_haystack(5, 333, 6)
    seen = []
    real_greedy = ne.greedy

    def recording_greedy(model, tokens, max_tokens):
        out = real_greedy(model, tokens, max_tokens)
        seen.append(np.array(model.scores[len(tokens) - 1], dtype=np.float64))
        return out

    evaluated = []
    real_eval = llm.eval

    def counting_eval(tokens):
        evaluated.append(len(tokens))
        return real_eval(tokens)

    monkeypatch.setattr(ne, "greedy", recording_greedy)
    monkeypatch.setattr(llm, "eval", counting_eval)
    reused = ne.ask(llm, haystack, max_tokens=6, reuse=True)
    # the context once; then each question evaluates its own tokens (and, in shift mode, at most the
    # newest block again) and its answer one token at a time, never the context
    assert evaluated[0] == len(haystack.tokens)
    assert max(evaluated[1:]) <= 32 + 20 and sum(evaluated) < 2 * len(haystack.tokens)
    reused_logits, seen[:], evaluated[:] = list(seen), [], []
    scratch = ne.ask(llm, haystack, max_tokens=6, reuse=False)
    llm.close()
    assert [r["answer"] for r in reused] == [r["answer"] for r in scratch]
    for a, b in zip(reused_logits, seen):
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))
    assert len(reused) == 6 and reused[0]["context_seconds"] is not None and scratch[0]["context_seconds"] is None
    prompts = [n for n in evaluated if n > 1]  # from scratch: every question evaluates its whole prompt
    assert len(prompts) == 6 and min(prompts) > len(haystack.tokens)


def test_found_counts_the_first_number_only():
    assert ne.found(" 4830172.", "4830172")
    assert not ne.found(" 1234567. The special magic number for the x is 4830172", "4830172")
    assert not ne.found(" 48301720", "4830172") and not ne.found(" the number", "4830172")


# -- the command ---------------------------------------------------------------------------------


def _prose_file(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text(PROSE * 3)
    return str(path)


def test_needle_miniature_and_resume(tiny128, tmp_path, capsys):
    out_dir = tmp_path / "nd"
    args = ["needle", "--model", tiny128, "--lengths", "512", "--needles", "3", "--text", _prose_file(tmp_path),
            "--max-tokens", "4", "--methods", "none", "yarn", "exact", "--grid", "8:32", "--out", str(out_dir), *COMMON]
    assert main([*args, "--contexts", "1"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| 512 ")]
    assert [line.split("|")[2].strip() for line in table] == ["none", "yarn", "exact", "exact@G8W32"]
    report = json.loads((out_dir / "needle.json").read_text())
    assert report["schema"] == "selfextend-gguf/needle/1"
    assert {"method", "length", "depth", "needle", "answer", "found"} <= set(report["rows"][0])
    assert len(report["rows"]) == 4 * 3
    for png in ("needle_accuracy.png", "needle_depth.png", "needle_heatmap.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --resume with a second context runs only that context, and the summary counts both
    assert main([*args, "--contexts", "2", "--resume"]) == 0
    report = json.loads((out_dir / "needle.json").read_text())
    assert len(report["rows"]) == 4 * 3 * 2
    assert sorted({(r["method"], r["context"]) for r in report["rows"]}) == sorted(
        (m, c) for m in ("none", "yarn", "exact", "exact@G8W32") for c in (0, 1))
    for s in (s for s in report["summary"] if s["depth"] is None):
        assert s["total"] == 6 and s["found"] == sum(
            r["found"] for r in report["rows"] if r["method"] == s["method"])
        assert (s["ci_low"], s["ci_high"]) == tuple(round(x, 4) for x in ne.wilson_interval(s["found"], 6))
    # the answers the report holds are the model's: each row's answer decides its `found`
    for r in report["rows"]:
        assert r["found"] == (r["value"] in "".join(c if c.isdigit() else " " for c in r["answer"]).split())


def test_stock_methods_share_one_evaluation_and_resume_adds_one(tmp_path, capsys):
    """At n_ctx <= L the stock, YaRN and automatic exact methods are one model: evaluated once by
    the stock library, recorded for each. Resuming with one more such method adds its rows only."""
    model = str(write_tiny_model(tmp_path / "llama512.gguf", arch="llama", context_length=512, seed=7))
    out_dir = tmp_path / "nd"
    args = ["needle", "--model", model, "--lengths", "512", "--needles", "3", "--text", _prose_file(tmp_path),
            "--max-tokens", "4", "--out", str(out_dir), *COMMON]
    assert main([*args, "--methods", "yarn", "exact", "none"]) == 0
    rows = json.loads((out_dir / "needle.json").read_text())["rows"]
    assert len(rows) == 9 and {r["evaluated_as"] for r in rows} == {"none"}
    by_method = {m: [r["answer"] for r in rows if r["method"] == m] for m in ("none", "yarn", "exact")}
    assert by_method["yarn"] == by_method["none"] == by_method["exact"]
    assert main([*args, "--methods", "yarn", "exact", "none", "linear", "--resume"]) == 0
    rows = json.loads((out_dir / "needle.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == sorted(["none", "yarn", "exact", "linear"] * 3)
    capsys.readouterr()
    # and a report measured with flash attention off is not continued with it on
    assert main([*args, "--methods", "none", "--resume", "--flash-attn", "on"]) != 0
    assert "flash_attn" in capsys.readouterr().err


def test_needle_rejects_a_missing_text(tiny128, tmp_path, capsys):
    rc = main(["needle", "--model", tiny128, "--lengths", "512", "--text", str(tmp_path / "nope.txt"),
               "--out", str(tmp_path / "o"), *COMMON])
    assert rc != 0
    assert "--text" in capsys.readouterr().err
