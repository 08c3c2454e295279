"""``selfextend-gguf demo`` (what ``scripts/bootstrap.py demo`` runs), on a tiny model."""

from __future__ import annotations

import re

from selfextend_gguf.cli import main
from tiny_models import write_tiny_model


def _rows(out: str):
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]


def test_demo_shows_stock_shift_and_exact_on_one_prompt(tmp_path, capsys):
    model = str(write_tiny_model(tmp_path / "llama128.gguf", arch="llama", context_length=128, seed=7))
    assert main(["demo", "--model", model, "--tokens", "400", "--threads", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert [r[0] for r in rows] == ["stock llama.cpp", "self-extend, shift mode", "self-extend, exact mode"]
    assert all(r[1].startswith("G=") for r in rows[1:])
    assert all(r[3] in ("yes", "no") and float(r[4]) >= 0 for r in rows)  # a tiny model can take under 0.05 s
    assert "prompt: " in out and "x the trained length" in out


def test_demo_sizes_the_context_for_instructions_longer_than_tokens(tmp_path, capsys):
    # the passkey instructions alone are about 250 tiny-vocab tokens: the context follows the prompt
    model = str(write_tiny_model(tmp_path / "llama128.gguf", arch="llama", context_length=128, seed=7))
    assert main(["demo", "--model", model, "--tokens", "160", "--threads", "1", "--mode", "exact"]) == 0
    out = capsys.readouterr().out
    assert int(re.search(r"prompt: (\d+) tokens", out).group(1)) > 160
    assert len(_rows(out)) == 2


def test_demo_with_one_mode(tmp_path, capsys):
    model = str(write_tiny_model(tmp_path / "llama128.gguf", arch="llama", context_length=128, seed=7))
    assert main(["demo", "--model", model, "--tokens", "400", "--threads", "1", "--mode", "exact"]) == 0
    assert [r[0] for r in _rows(capsys.readouterr().out)] == ["stock llama.cpp", "self-extend, exact mode"]


def test_demo_default_length_and_flash_attention_off(tmp_path, capsys):
    model = str(write_tiny_model(tmp_path / "llama512.gguf", arch="llama", context_length=512, seed=7))
    assert main(["demo", "--model", model, "--threads", "1", "--flash-attn", "off", "--mode", "shift"]) == 0
    out = capsys.readouterr().out
    n_prompt = int(re.search(r"prompt: (\d+) tokens", out).group(1))
    assert 650 < n_prompt <= 768  # 1.5x the trained 512 (the tiny vocabulary fills it less closely than a real one)
    assert [r[0] for r in _rows(out)] == ["stock llama.cpp", "self-extend, shift mode"]
