"""scripts/grid_table.py: the G x W grid's table, settings compared bucket by bucket."""

from __future__ import annotations

import math

import pytest

from script_modules import load_script


@pytest.fixture(scope="module")
def gt():
    return load_script("grid_table")


def test_t_quantiles(gt):
    assert gt.t95(1) == pytest.approx(12.706) and gt.t95(30) == pytest.approx(2.042)
    # the expansion beyond the table: t(40) = 2.0211, t(120) = 1.9799, and it falls towards z
    assert gt.t95(40) == pytest.approx(2.0211, abs=5e-4) and gt.t95(120) == pytest.approx(1.9799, abs=5e-4)
    assert gt.t95(31) < gt.t95(30) and gt.t95(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="2 buckets"):
        gt.t95(0)


def test_paired_interval(gt):
    mean, lo, hi = gt.paired_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # differences 1, 2, 3: sd 1
    assert mean == pytest.approx(2.0)
    assert (lo, hi) == pytest.approx((2.0 - 4.303 / math.sqrt(3), 2.0 + 4.303 / math.sqrt(3)))
    with pytest.raises(ValueError, match="equal lengths"):
        gt.paired_interval([1.0], [1.0, 2.0])


def _report(cells):
    rows, summary = [], []
    for method, nlls in cells.items():
        for i, nll in enumerate(nlls):
            rows.append({"method": method, "length": 4096, "start": 1024 * i, "mean_nll": nll})
        beyond = nlls[1:]  # L = 1024: the first bucket is inside
        summary.append({"method": method, "length": 4096, "setting": method,
                        "ppl_beyond": math.exp(sum(beyond) / len(beyond))})
    return {"settings": {"n_ctx_train": 1024}, "rows": rows, "summary": summary}


def test_table_ranks_settings_and_compares_them_with_the_best(gt):
    report = _report({"a": [9.0, 3.0, 3.2, 3.1], "b": [1.0, 3.1, 3.3, 3.2], "c": [2.0, 3.0, 3.2, 3.1]})
    needle = {"summary": [{"method": "b", "length": 4096, "depth": None, "found": 2, "total": 40,
                           "ci_low": 0.0138, "ci_high": 0.165}]}
    lines = gt.table(report, needle).splitlines()[2:]
    assert [line.split(" | ")[1] for line in lines] == ["a", "c", "b"]  # a and c tie beyond L: stable order
    assert "| best |" in lines[0] and lines[1].split(" | ")[3].startswith("+0.0000")  # c equals a beyond L
    # b is 0.1 worse in every bucket beyond L (the bucket inside, far better, is not counted)
    assert lines[2].split(" | ")[3] == "+0.1000 (+0.1000, +0.1000)"
    assert lines[2].endswith("| 2/40 (0.01-0.17) |") and lines[0].endswith("| - |")


def test_an_automatic_cell_of_another_report_fills_its_grid_cell(gt):
    report = _report({"exact@G3W2048": [1.0, 3.0, 3.2], "exact@G3W1024": [1.0, 3.1, 3.3]})
    grid = {"summary": [{"method": "exact@G3W1024", "setting": "G=3 W=1024", "length": 4096, "depth": None,
                         "found": 5, "total": 40, "ci_low": 0.05, "ci_high": 0.26}]}
    main = {"summary": [
        {"method": "exact", "setting": "G=3 W=2048 (auto)", "length": 4096, "depth": None,
         "found": 3, "total": 40, "ci_low": 0.03, "ci_high": 0.2},
        {"method": "shift", "setting": "G=3 W=1024 (auto)", "length": 4096, "depth": None,  # not exact mode's
         "found": 9, "total": 40, "ci_low": 0.1, "ci_high": 0.4},
        {"method": "exact", "setting": "G=3 W=2048 (auto)", "length": 4096, "depth": 0.5,  # a depth bin
         "found": 1, "total": 8, "ci_low": 0.02, "ci_high": 0.47}]}
    lines = gt.table(report, grid, main).splitlines()[2:]
    assert lines[0].startswith("| 4096 | exact@G3W2048 |") and lines[0].endswith("| 3/40 (0.03-0.20) |")
    assert lines[1].endswith("| 5/40 (0.05-0.26) |")
    assert gt.grid_label({"method": "exact@G4W1024", "setting": "G=4 W=1024"}) == "exact@G4W1024"
    assert gt.grid_label({"method": "shift", "setting": "G=4 W=2048 (auto)"}) == "shift"
