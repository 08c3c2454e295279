"""The perplexity command on the real default model and the real default text (slow: ~30 s)."""

from __future__ import annotations

import json

import pytest

from selfextend_gguf.cli import main

pytestmark = pytest.mark.slow


def test_perplexity_of_botchan_is_natural_text_perplexity(tmp_path, capsys):
    """SmolLM2 on the first 1024 tokens of Botchan: a perplexity a 135M model gets on English
    prose (an off-by-one between logits and targets gives hundreds or more), with self-extend
    at a small G close to the stock model's."""
    rc = main(["perplexity", "--lengths", "1024", "--bucket", "256", "--methods", "none", "shift@G2W256",
               "--threads", "2", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    assert "| 1024 | none | - |" in capsys.readouterr().out
    report = json.loads((tmp_path / "perplexity.json").read_text())
    assert report["settings"]["text"]["tokens"] >= 40_000
    ppl = {s["method"]: s["ppl"] for s in report["summary"]}
    assert 10 < ppl["none"] < 80, ppl
    assert ppl["shift@G2W256"] != ppl["none"] and abs(ppl["shift@G2W256"] / ppl["none"] - 1) < 0.2, ppl
    assert (tmp_path / "perplexity_1024.png").is_file()
