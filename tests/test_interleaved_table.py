"""scripts/interleaved_table.py: repeated side-by-side runs as one table of each run's ratio and
their median, grouped by what makes runs comparable."""

from __future__ import annotations

import json
import statistics

import pytest

from script_modules import load_script


@pytest.fixture(scope="module")
def it():
    return load_script("interleaved_table")


@pytest.fixture(scope="module")
def pi():
    return load_script("prompt_interleaved")


def _report(pi, path, *, n_ctx=4096, fa="off", threads=2, ubatch=None, seconds=None):
    """A report as prompt_interleaved.py writes it, its summary from the script's own summarize()."""
    seconds = seconds or {"none": 2.0, "exact": 2.5}
    ubatch = ubatch or {"none": 512, "exact": 128}
    rows = [{"c0": 0, "n": 1000, **seconds}]
    path.write_text(json.dumps({"command": "test", "n_ctx": n_ctx, "chunk": 1000, "flash_attn": fa,
                                "threads": threads, "n_ubatch": ubatch, "rows": rows,
                                "summary": pi.summarize(rows, list(seconds)), "decode_rows": [],
                                "decode_summary": None}))
    return path


def _cells(table):
    """The table's data rows as lists of cells."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_each_run_its_ratio_and_the_median(it, pi, tmp_path):
    # exact takes 2.5, 2.0, 4.0 s where stock takes 2 s: 0.8x, 1.0x, 0.5x; the median 0.8x
    for i, s in enumerate([2.5, 2.0, 4.0]):
        _report(pi, tmp_path / f"4k-{i}.json", seconds={"none": 2.0, "exact": s})
    (tmp_path / "4k-3.json.part").write_text("{")  # an unfinished run is not read
    runs = it.load_runs(it.report_paths([str(tmp_path)]))
    assert [r.ratio for r in runs] == pytest.approx([0.8, 1.0, 0.5])
    (row,) = _cells(it.table(runs))
    assert row[:6] == ["4096", "off", "2", "exact", "128", "3"]
    assert row[6:9] == ["0.80, 1.00, 0.50", "**0.800**", "0.50-1.00"]
    assert row[9] == f"{statistics.median([1000 / 2.0] * 3):.1f}"


def test_runs_that_differ_in_setting_are_not_pooled(it, pi, tmp_path):
    paths = [_report(pi, tmp_path / "a.json"),
             _report(pi, tmp_path / "b.json", fa="on"),
             _report(pi, tmp_path / "c.json", threads=1),
             _report(pi, tmp_path / "d.json", ubatch={"none": 512, "exact": 256}),
             _report(pi, tmp_path / "e.json", n_ctx=16384),
             # the same setting under a label with its own ubatch is the same row as a.json
             _report(pi, tmp_path / "f.json", ubatch={"none": 512, "exact:128": 128},
                     seconds={"none": 2.0, "exact:128": 4.0})]
    rows = _cells(it.table(it.load_runs(paths)))
    assert len(rows) == 5
    pooled = [r for r in rows if r[:5] == ["4096", "off", "2", "exact", "128"]]
    assert len(pooled) == 1 and pooled[0][5] == "2" and pooled[0][6] == "0.80, 0.50"


def test_every_method_against_the_first(it, pi, tmp_path):
    p = _report(pi, tmp_path / "r.json", ubatch={"none": 512, "exact": 128, "shift": 512},
                seconds={"none": 2.0, "exact": 4.0, "shift": 1.0})
    runs = it.load_runs([p])
    assert {r.method: round(r.ratio, 6) for r in runs} == {"exact": 0.5, "shift": 2.0}


def test_a_real_report(it, pi, tiny_llama_path, tmp_path):
    # the format the script writes today, read back: the ratio is the report's own prompt tokens/s
    out = tmp_path / "tiny.json"
    assert pi.main(["--model", str(tiny_llama_path), "--n-ctx", "128", "--chunk", "40", "--threads", "1",
                    "--methods", "none", "exact@G4W16", "--out", str(out)]) == 0
    (run,) = it.load_runs([out])
    tps = json.loads(out.read_text())["summary"]["tps"]
    assert (run.n_ctx, run.flash_attn, run.threads, run.method) == (128, "off", 1, "exact@G4W16")
    assert run.ratio == pytest.approx(tps["exact@G4W16"] / tps["none"])
    # a run that times one chunk from a saved state measures something else: not pooled, refused
    at = tmp_path / "at.json"
    assert pi.main(["--model", str(tiny_llama_path), "--n-ctx", "128", "--chunk", "20", "--threads", "1",
                    "--methods", "none", "exact@G4W16", "--from-state", "60", "--rounds", "2",
                    "--out", str(at)]) == 0
    with pytest.raises(ValueError, match="saved state"):
        it.load_runs([out, at])


def test_bad_arguments(it, tmp_path):
    with pytest.raises(ValueError, match="JSON report or a folder"):
        it.report_paths([str(tmp_path / "notes.txt")])
    assert it.main([str(tmp_path)]) == 1  # an empty folder: nothing to tabulate
