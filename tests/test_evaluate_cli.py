"""Miniatures of ``selfextend-gguf passkey|perplexity|bench`` on a tiny model (seconds each).

They run the real commands end to end and check what a reader relies on: the markdown table
on stdout, the JSON report and its schema, valid PNG files, and numbers that make sense.
"""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest

from selfextend_gguf.cli import main
from selfextend_gguf.evaluate.report import ENVELOPE_KEYS
from tiny_models import write_tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = ["--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny128(tmp_path_factory):
    """A tiny llama trained on 128 tokens: the passkey instructions (~250 tiny-vocab tokens) fit 2x that."""
    return str(write_tiny_model(tmp_path_factory.mktemp("eval") / "llama128.gguf", arch="llama",
                                context_length=128, seed=7))


def _report(path, command):
    report = json.loads(path.read_text())
    assert tuple(report) == ENVELOPE_KEYS
    assert report["schema"] == f"selfextend-gguf/{command}/1"
    assert report["command"].startswith(f"selfextend-gguf {command} ")
    assert report["model"]["n_ctx_train"] == 128 and report["model"]["arch"] == "llama"
    assert report["machine"]["llama_cpp_python"] and report["machine"]["threads"] == 1
    return report


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def _table_lines(out):
    return [line for line in out.splitlines() if line.startswith("|")]


def test_passkey_miniature(tiny128, tmp_path, capsys):
    out_dir = tmp_path / "pk"
    rc = main(["passkey", "--model", tiny128, "--lengths", "256", "320", "--depths", "0", "1", "--keys", "2",
               "--max-tokens", "4", "--methods", "none", "yarn", "shift", "exact", "--grid", "4:32", "--out", str(out_dir),
               *COMMON])
    assert rc == 0
    out = capsys.readouterr().out
    table = _table_lines(out)
    labels = ["none", "yarn", "shift", "exact", "shift@G4W32", "exact@G4W32"]
    assert table[0].startswith("| length | method | setting | depth 0 | depth 1 | accuracy |")
    assert len(table) == 2 + 2 * len(labels)
    assert "n_ctx 320:" in out and "exact: G=3 W=32 (auto)" in out  # the automatic choice is shown

    report = _report(out_dir / "passkey.json", "passkey")
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2 * len(labels)
    assert {r["method"] for r in rows} == set(labels)
    for r in rows:
        assert len(r["key"]) == 5 and isinstance(r["found"], bool) and r["prompt_tokens"] <= r["length"] - 4
        assert r["n_ctx"] == r["length"]
    # the same keys for every method
    keys = {(r["length"], r["depth"], r["key_index"]): r["key"] for r in rows if r["method"] == "none"}
    assert all(keys[r["length"], r["depth"], r["key_index"]] == r["key"] for r in rows)
    overall = {s["method"]: s for s in report["summary"] if s["length"] is None}
    assert all(s["total"] == 8 and 0 <= s["accuracy"] <= 1 for s in overall.values())
    auto = [m for m in report["methods"] if m["label"] == "exact"]
    assert {(m["n_ctx"], m["group_size"], m["auto"]) for m in auto} == {(256, 3, True), (320, 3, True)}
    for label in ("none", "yarn", "shift", "exact", "shift-G4W32", "exact-G4W32"):
        _assert_png(out_dir / f"passkey_{label}.png")


def test_perplexity_miniature(tiny128, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the grass is green and the sky is blue"] * 60))
    out_dir = tmp_path / "pp"
    rc = main(["perplexity", "--model", tiny128, "--text", str(text), "--lengths", "256", "--bucket", "64",
               "--n-batch", "64", "--methods", "none", "linear", "shift", "--out", str(out_dir), "--threads", "1"])
    assert rc == 0
    table = _table_lines(capsys.readouterr().out)
    assert table[0] == "| tokens | method | setting | ppl | ppl < L | ppl >= L | seconds |" and len(table) == 5

    report = _report(out_dir / "perplexity.json", "perplexity")
    assert report["settings"]["text"]["path"] == str(text) and report["settings"]["bucket"] == 64
    for s in report["summary"]:
        for key in ("ppl", "ppl_inside", "ppl_beyond"):
            assert math.isfinite(s[key]) and s[key] > 1
        assert s["tokens_inside"] == 127 and s["tokens_beyond"] == 128
    for method in ("none", "linear", "shift"):
        buckets = [r for r in report["rows"] if r["method"] == method]
        assert [(b["start"], b["tokens"]) for b in buckets] == [(0, 63), (64, 64), (128, 64), (192, 64)]
        # the buckets are the per-position NLLs regrouped: their weighted mean is the overall one
        mean = sum(b["mean_nll"] * b["tokens"] for b in buckets) / sum(b["tokens"] for b in buckets)
        s = next(s for s in report["summary"] if s["method"] == method)
        assert math.exp(mean) == pytest.approx(s["ppl"], rel=1e-9)
    ppl = {s["method"]: s["ppl"] for s in report["summary"]}
    assert len(set(ppl.values())) == 3  # three different methods, three different results
    _assert_png(out_dir / "perplexity_256.png")


def test_perplexity_text_too_short(tiny128, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("too short")
    rc = main(["perplexity", "--model", tiny128, "--text", str(text), "--lengths", "256", "--out",
               str(tmp_path), *COMMON])
    assert rc == 2 and "fewer than the length 256" in capsys.readouterr().err


def test_bench_flash_attn_both(tiny128, tmp_path, capsys):
    """--flash-attn both runs every (method, n_ctx) with flash attention off and on, and each row's
    ratios are to the stock library with the same setting."""
    out_dir = tmp_path / "fa"
    rc = main(["bench", "--model", tiny128, "--lengths", "128", "--decode", "2", "--methods", "none", "exact",
               "--flash-attn", "both", "--out", str(out_dir), *COMMON])
    assert rc == 0
    table = _table_lines(capsys.readouterr().out)
    assert len(table) == 6 and {line.split("|")[2].strip() for line in table[2:]} == {"off", "on"}
    report = _report(out_dir / "bench.json", "bench")
    assert sorted((t["flash_attn"], t["method"]) for t in report["rows"]) == [
        (False, "exact"), (False, "none"), (True, "exact"), (True, "none")]
    for r in report["summary"]:
        base = next(b for b in report["summary"] if b["method"] == "none" and b["flash_attn"] == r["flash_attn"])
        assert r["prompt_x"] == pytest.approx(r["prompt_tps"] / base["prompt_tps"])
    # --resume with the same options runs nothing again
    rc = main(["bench", "--model", tiny128, "--lengths", "128", "--decode", "2", "--methods", "none", "exact",
               "--flash-attn", "both", "--out", str(out_dir), "--resume", *COMMON])
    assert rc == 0 and len(_report(out_dir / "bench.json", "bench")["rows"]) == 4


def test_flash_attn_both_is_for_bench_only(tiny128, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["perplexity", "--model", tiny128, "--flash-attn", "both", "--out", str(tmp_path), *COMMON])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bench_miniature(tiny128, tmp_path, capsys):
    out_dir = tmp_path / "bn"
    rc = main(["bench", "--model", tiny128, "--lengths", "128", "256", "--decode", "3", "--methods", "none",
               "shift", "exact", "--repeat", "2", "--out", str(out_dir), *COMMON])
    assert rc == 0
    table = _table_lines(capsys.readouterr().out)
    assert table[0].startswith("| n_ctx | flash attn | method | setting | ubatch | prompt tok/s | decode tok/s | KV MiB")
    assert len(table) == 8
    report = _report(out_dir / "bench.json", "bench")
    trials, rows = report["rows"], report["summary"]
    assert len(trials) == 12 and sorted({t["trial"] for t in trials}) == [0, 1]
    assert len(rows) == 6 and all(r["trials"] == 2 and "decode_pass_seconds" not in r for r in rows)
    assert report["settings"]["decode_passes"] == 3
    for t in trials:  # the decode time is the median pass
        assert t["decode_passes"] == len(t["decode_pass_seconds"]) == 3
        assert t["decode_seconds"] == sorted(t["decode_pass_seconds"])[1]
    for r in trials:
        for key in ("prompt_tps", "decode_tps", "kv_mib", "compute_mib", "peak_rss_mib"):
            assert r[key] > 0, (key, r)
        assert r["prompt_tokens"] == r["n_ctx"] - 3 - 8
    for r in rows:  # the summary is the median of the two trials
        pair = [t["prompt_tps"] for t in trials if (t["n_ctx"], t["method"]) == (r["n_ctx"], r["method"])]
        assert r["prompt_tps"] == pytest.approx(sum(pair) / 2)
    base = [r for r in rows if r["method"] == "none"]
    assert all(r["prompt_x"] == r["decode_x"] == r["memory_x"] == 1.0 for r in base)
    # same model, same n_ctx: the KV cache is the same size for every method
    for n in (128, 256):
        assert len({r["kv_mib"] for r in rows if r["n_ctx"] == n}) == 1
    assert {r["setting"] for r in rows if r["n_ctx"] == 256 and r["method"] == "exact"} == {"G=3 W=32 (auto)"}
    _assert_png(out_dir / "bench.png")


@pytest.mark.parametrize("label, flash_attn", [("none", False), ("shift@G4W16", False), ("exact@G4W16", False),
                                               ("exact@G4W16", True)])
def test_decode_passes_restart_from_the_same_cache(tiny128, label, flash_attn):
    """Each timed decode pass starts from the prompt's cache: its last logits equal those of a fresh
    model that evaluated the prompt and decoded the same tokens. The 24 decoded tokens cross a block of shift mode and
    move keys out of exact mode's window, which the next pass must take back."""
    import numpy as np

    from selfextend_gguf.evaluate.bench import last_logits, time_decode_passes
    from selfextend_gguf.evaluate.methods import parse_method, resolve_all

    (method,) = resolve_all([parse_method(label)], 256, 128)
    kwargs = dict(n_threads=1, n_threads_batch=1, verbose=False, flash_attn=flash_attn)
    rng = np.random.default_rng(3)
    prompt, decoded = rng.integers(3, 200, size=200).tolist(), rng.integers(3, 200, size=24).tolist()

    fresh = method.build(tiny128, **kwargs)
    fresh.eval(prompt)
    for t in decoded:  # one at a time, as the passes decode (exact mode's decode graph differs from a prompt's)
        fresh.eval([t])
    want = last_logits(fresh)
    fresh.close()

    llm = method.build(tiny128, **kwargs)
    llm.eval(prompt)
    seconds, logits = time_decode_passes(llm, decoded, passes=3)
    llm.close()
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    scale = np.abs(want).max()
    assert scale > 0
    for got in logits:
        assert np.abs(got - want).max() <= 1e-3 * scale
    with pytest.raises(ValueError, match="decode_passes must be >= 1"):
        time_decode_passes(llm, decoded, passes=0)


def test_missing_matplotlib_still_writes_json(tiny128, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out_dir = tmp_path / "nomp"
    rc = main(["bench", "--model", tiny128, "--lengths", "128", "--decode", "1", "--methods", "none",
               "--out", str(out_dir), *COMMON])
    assert rc == 0
    captured = capsys.readouterr()
    assert "matplotlib is not installed" in captured.err and "selfextend-gguf[plots]" in captured.err
    assert (out_dir / "bench.json").is_file() and not list(out_dir.glob("*.png"))


def test_bad_grid_fails_before_loading(tiny128, tmp_path, capsys):
    rc = main(["passkey", "--model", tiny128, "--lengths", "256", "--grid", "2:128", "--out", str(tmp_path), *COMMON])
    assert rc == 2
    captured = capsys.readouterr()
    assert "window=128 must be smaller than the model's trained context length 128" in captured.err
    assert "model:" not in captured.out and not (tmp_path / "passkey.json").exists()


def test_passkey_one_n_ctx_for_all_lengths(tiny128, tmp_path, capsys):
    """--n-ctx runs every length with one setting (as the paper's figure); it must cover the longest."""
    rc = main(["passkey", "--model", tiny128, "--lengths", "256", "320", "--depths", "0.5", "--keys", "1",
               "--max-tokens", "2", "--methods", "exact", "--n-ctx", "320", "--out", str(tmp_path), *COMMON])
    assert rc == 0
    report = json.loads((tmp_path / "passkey.json").read_text())
    assert {(r["length"], r["n_ctx"], r["setting"]) for r in report["rows"]} == {
        (256, 320, "G=3 W=32 (auto)"), (320, 320, "G=3 W=32 (auto)")}
    assert "--n-ctx 320" in report["command"]
    capsys.readouterr()
    rc = main(["passkey", "--model", tiny128, "--lengths", "256", "320", "--n-ctx", "300", "--out", str(tmp_path),
               *COMMON])
    assert rc == 2 and "--n-ctx 300 is smaller than the longest length 320" in capsys.readouterr().err


def test_passkey_report_survives_a_crash_and_resumes(tiny128, tmp_path, capsys, monkeypatch):
    """The report is rewritten after each method; --resume keeps it and runs only what is missing."""
    from selfextend_gguf.evaluate.methods import Method

    base = ["passkey", "--model", tiny128, "--depths", "0.5", "--keys", "1", "--max-tokens", "2",
            "--out", str(tmp_path), *COMMON]
    real_build = Method.build

    def build(self, *a, **k):
        if self.kind == "exact":
            raise RuntimeError("simulated crash")
        return real_build(self, *a, **k)

    monkeypatch.setattr(Method, "build", build)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*base, "--lengths", "256", "--methods", "none", "exact"])
    first = json.loads((tmp_path / "passkey.json").read_text())
    assert {(r["method"], r["length"]) for r in first["rows"]} == {("none", 256)}

    monkeypatch.setattr(Method, "build", real_build)
    assert main([*base, "--lengths", "256", "320", "--methods", "none", "exact", "--resume"]) == 0
    report = json.loads((tmp_path / "passkey.json").read_text())
    assert {(r["method"], r["length"]) for r in report["rows"]} == {
        ("none", 256), ("none", 320), ("exact", 256), ("exact", 320)}
    kept = [r for r in report["rows"] if (r["method"], r["length"]) == ("none", 256)]
    assert kept == first["rows"]  # not measured again
    assert len(report["settings"]["runs"]) == 2 and report["settings"]["lengths"] == [256, 320]
    assert "| 320 | exact |" in capsys.readouterr().out

    # a --grid setting added at one length only: its heatmap has that column, the others keep theirs
    assert main([*base, "--lengths", "320", "--methods", "exact", "--grid", "4:32", "--resume"]) == 0
    report = json.loads((tmp_path / "passkey.json").read_text())
    assert {r["length"] for r in report["rows"] if r["method"] == "exact@G4W32"} == {320}
    for label in ("none", "exact", "exact-G4W32"):
        _assert_png(tmp_path / f"passkey_{label}.png")
    assert "| 320 | exact@G4W32 |" in capsys.readouterr().out

    # other settings cannot be mixed into the same report
    assert main([*base, "--lengths", "256", "--keys", "2", "--resume"]) == 2
    assert "keys: 1 there, 2 now" in capsys.readouterr().err


def test_bench_resume_adds_trials(tiny128, tmp_path, capsys):
    base = ["bench", "--model", tiny128, "--lengths", "128", "--decode", "1", "--methods", "none", "shift",
            "--out", str(tmp_path), *COMMON]
    assert main(base) == 0
    first = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert main([*base, "--repeat", "2", "--resume"]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [t for t in report["rows"] if t["trial"] == 0] == first
    assert sorted((t["method"], t["trial"]) for t in report["rows"]) == [
        ("none", 0), ("none", 1), ("shift", 0), ("shift", 1)]
    assert all(s["trials"] == 2 for s in report["summary"])


def test_perplexity_resume_adds_methods(tiny128, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["a cat sat on the mat"] * 80))
    base = ["perplexity", "--model", tiny128, "--text", str(text), "--lengths", "200", "--bucket", "50",
            "--out", str(tmp_path / "pp"), *COMMON]
    assert main([*base, "--methods", "none"]) == 0
    first = json.loads((tmp_path / "pp" / "perplexity.json").read_text())
    assert main([*base, "--methods", "none", "linear", "--resume"]) == 0
    report = json.loads((tmp_path / "pp" / "perplexity.json").read_text())
    assert [s["method"] for s in report["summary"]] == ["none", "linear"]
    assert report["summary"][0] == first["summary"][0]
    assert len(report["rows"]) == 2 * len(first["rows"])


def test_bench_runs_each_method_with_its_own_ubatch(tiny128, tmp_path, capsys):
    base = ["bench", "--model", tiny128, "--lengths", "256", "--decode", "1", "--methods", "none", "exact@G4W32",
            "--out", str(tmp_path), *COMMON]
    assert main(base) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    # llama.cpp's default for the stock graph (n_batch, capped at n_ctx), exact mode's own (selfextend_gguf.ubatch)
    assert {r["method"]: r["n_ubatch"] for r in rows} == {"none": 256, "exact@G4W32": 128}
    # --n-ubatch sets it for all, and a report measured without it is not continued with it
    assert main([*base, "--n-ubatch", "64", "--resume"]) == 2
    assert "n_ubatch: None there, 64 now" in capsys.readouterr().err
    assert main([*base, "--n-ubatch", "64", "--out", str(tmp_path / "u64")]) == 0
    rows = json.loads((tmp_path / "u64" / "bench.json").read_text())["rows"]
    assert {r["method"]: r["n_ubatch"] for r in rows} == {"none": 64, "exact@G4W32": 64}


def test_bench_report_without_n_ubatch_was_measured_with_n_batch(tiny128, tmp_path, capsys):
    base = ["bench", "--model", tiny128, "--lengths", "256", "--decode", "1", "--methods", "none",
            "--out", str(tmp_path), *COMMON]
    assert main(base) == 0
    path = tmp_path / "bench.json"
    report = json.loads(path.read_text())
    del report["settings"]["n_ubatch"]  # as written before --n-ubatch existed
    path.write_text(json.dumps(report))
    assert main([*base, "--resume"]) == 2
    assert "n_ubatch: 'n_batch' there, None now" in capsys.readouterr().err
