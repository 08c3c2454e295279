"""The patch series: one file per entry of patches/series, each with a valid DEP-3 header.

DEP-3 (Debian's patch tagging guidelines) asks for a Description (a summary line, then the long
description), an Author or From, a Forwarded field (``no``, ``not-needed`` or where it was sent)
when the patch is not from upstream, and a Last-Update date; the header ends where the diff starts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PATCHES = Path(__file__).resolve().parents[1] / "patches"


def _series() -> list:
    return [line.strip() for line in (PATCHES / "series").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _header(path: Path) -> dict:
    text = path.read_text()
    head = text[: text.index("\n---\n")] if "\n---\n" in text else text[: text.index("diff --git")]
    fields: dict = {}
    key = None
    for line in head.splitlines():
        if line.startswith(" ") and key:  # continuation of the previous field
            fields[key] += "\n" + line[1:]
        else:
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            assert m, f"{path.name}: not a DEP-3 field: {line!r}"
            key = m.group(1)
            fields[key] = m.group(2)
    return fields


def test_series_lists_every_patch_once():
    series = _series()
    assert len(series) == len(set(series))
    assert sorted(series) == sorted(p.name for p in PATCHES.glob("*.patch"))
    # numbered in the order they apply
    assert [int(name[:4]) for name in series] == list(range(1, len(series) + 1))


@pytest.mark.parametrize("name", _series())
def test_dep3_header(name):
    path = PATCHES / name
    fields = _header(path)
    summary, _, long_description = fields["Description"].partition("\n")
    assert summary.strip() and long_description.strip(), f"{name}: Description needs a summary and a long text"
    assert re.match(r"^[\w.-]+ : ", summary), f"{name}: summary should name the component, llama.cpp style"
    assert fields.get("Author") or fields.get("From"), f"{name}: no Author"
    forwarded = fields.get("Forwarded", "")
    assert forwarded in ("no", "not-needed") or forwarded.startswith("http"), \
        f"{name}: Forwarded must be no, not-needed or a URL, not {forwarded!r}"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields.get("Last-Update", "")), f"{name}: Last-Update YYYY-MM-DD"
    assert "diff --git" in path.read_text()


_RATIO = re.compile(r"\b\d+\.\d+x\b")  # a speed ratio as the README writes it, e.g. 0.88x


@pytest.mark.parametrize("name", _series())
def test_header_ratios_are_the_readmes(name):
    """A ratio a patch header gives (exact mode against the stock library) is one the README's
    cost table gives: the two are read by different people and must not tell different stories.
    A patch's own before/after evidence is given in tokens/s or percent instead."""
    readme = set(_RATIO.findall((PATCHES.parent / "README.md").read_text()))
    head = (PATCHES / name).read_text().partition("\n---\n")[0]
    stray = sorted(set(_RATIO.findall(head)) - readme)
    assert not stray, f"{name}: ratios not in the README: {', '.join(stray)}"
