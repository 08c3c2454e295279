"""scripts/exact_cost_model.py: the multiply-add count behind the README's cost bounds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from script_modules import SCRIPTS, load_script

SCRIPT = SCRIPTS / "exact_cost_model.py"


@pytest.fixture(scope="module")
def cm():
    return load_script("exact_cost_model")


def test_shape_from_gguf(cm, tiny_llama_path):
    s = cm.Shape.from_gguf(str(tiny_llama_path))
    assert (s.n_layer, s.n_head, s.n_head_kv, s.head_dim_k, s.head_dim_v) == (2, 4, 2, 16, 16)
    # per layer: q 64x64, k and v 32x64, output 64x64, gate/up/down 96x64 (tiny_models defaults)
    assert s.weight_macs == 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 96 * 64)


def _enumerated_extra(cm, s, n_prompt, n_ubatch, w, flash_attn=False):
    """The exact graph's extra multiply-adds, from the cell sets enumerated pair by pair: a key is
    stored exact while it is within W of the newest position; the window of a ubatch is every key
    that one of its queries sees as a neighbour, or sees grouped while it is still stored exact.
    A window that starts after cell 0 is attended apart from the cells before it, which are scored
    with one more column (the window's log-sum-exp) and multiplied with their V (no flash attention);
    with flash attention, a window of at least two scratch cells per query and query head of a KV
    head is multiplied with its V as well, and the rest takes the whole cache's product."""
    L, H, dk, dv = s.n_layer, s.n_head, s.head_dim_k, s.head_dim_v
    extra = 0
    for p in range(0, n_prompt, n_ubatch):
        queries = range(p, min(p + n_ubatch, n_prompt))
        if max(queries) < w:
            continue
        stored_exact = {j for j in range(0, p) if (p - 1) - j < w} | set(queries)
        nb = {j for i in queries for j in range(0, i + 1) if i - j < w}
        crossing = {j for i in queries for j in stored_exact if j <= i and i - j >= w}
        window = nb | crossing
        assert window == set(range(min(window), max(window) + 1))  # consecutive: read in place
        n = len(queries)
        n_kv = -(-(max(queries) + 1) // 256) * 256
        before = set(range(0, min(window)))
        scores = n * L * H * dk * (len(window) + len(crossing))
        # the cells before the window up to the next multiple of 16 (masked cells of the window), then a block
        # of 16 columns whose first holds the window's log-sum-exp: the split needs all of them inside the used cells
        padded = -(-len(before) // 16) * 16
        if flash_attn and 2 * (H // s.n_head_kv) * n <= len(window):
            extra += scores + n * L * H * dv * len(window)
        elif before and not flash_attn and padded + 16 <= max(window) + 1:
            extra += scores + n * L * H * (dk * (padded + 16) + dv * (padded + len(window)) - n_kv * (dk + dv))
        else:
            extra += scores
    return extra


@pytest.mark.parametrize("n_prompt,n_ubatch,w", [(300, 64, 40), (300, 64, 100), (130, 1, 16), (257, 32, 300),
                                                 (700, 128, 300)])
def test_prompt_count_matches_enumeration(cm, n_prompt, n_ubatch, w):
    s = cm.Shape(n_layer=2, n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=8, weight_macs=1000)
    stock, exact, rotated = cm.prompt_macs(s, n_prompt, n_ubatch, w)
    assert exact - stock == _enumerated_extra(cm, s, n_prompt, n_ubatch, w)
    if w >= n_prompt:  # every ubatch takes the stock path
        assert (exact, rotated) == (stock, 0)
    else:
        assert exact != stock and rotated > 0
        # every key is re-rotated once at most (when it leaves the window), per layer and KV head
        assert rotated <= 2 * 2 * n_prompt


def test_prompt_count_with_flash_attention(cm):
    s = cm.Shape(n_layer=2, n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=8, weight_macs=1000)
    # the ubatch of 8 queries at 100..107, W = 40: window 60..107 (48 cells), 2 x 2 x 8 = 32 scratch cells
    # fit (two per query and query head of a KV head)
    assert cm.ubatch_window(100, 8, 40) == 48 and cm.ubatch_window(32, 8, 40) == 0
    for w in (4, 20, 24, 40):
        stock, exact = cm.prompt_macs_fa(s, 112, 8, w)
        assert stock == cm.prompt_macs(s, 112, 8, w)[0]
        assert exact - stock == _enumerated_extra(cm, s, 112, 8, w, flash_attn=True)
    # the ubatches at 40, 48, ..., 104: 9 windows of 48 cells (the first from 0: 48 too), each scored
    # with its keys that leave it, and multiplied with its V
    stock, exact = cm.prompt_macs_fa(s, 112, 8, 40)
    assert exact - stock == 9 * 8 * 2 * 4 * (16 * (48 + 8) + 8 * 48)
    # W = 20: windows of 28 cells hold one scratch cell per query and head but not two: unfused (the
    # whole cache, as the cache made for flash attention does not hold V transposed);
    # W = 24: windows of 32 cells hold both
    assert cm.ubatch_window(100, 8, 20) == 28 and cm.ubatch_window(100, 8, 24) == 32
    unfused = cm.prompt_macs_ubatch(s, 100, 8, 20, flash_attn=True)
    assert unfused[1] - unfused[0] == 8 * 2 * 4 * 16 * (28 + 8)
    fused = cm.prompt_macs_ubatch(s, 100, 8, 24, flash_attn=True)
    assert fused[1] - fused[0] == 8 * 2 * 4 * (16 * (32 + 8) + 8 * 32)


def test_prompt_count_with_flash_attention_on_the_cpu(cm):
    s = cm.Shape(n_layer=2, n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=8, weight_macs=1000)
    per_cell = 2 * 4 * (16 + 8)  # 2 layers, 4 heads, a key and a value
    # fewer than 64 queries are taken one by one, each masked key skipped: query i of 100..107 (W = 40) sees
    # i + 1 cells in the stock graph, and in exact mode the 40 within W exact and the i - 39 before them
    # grouped: the same cells, once each
    stock, exact = cm.prompt_macs_ubatch_lse(s, 100, 8, 40)
    assert stock == exact == 8 * 1000 + per_cell * sum(i + 1 for i in range(100, 108))
    # 128 queries at 256..383, W = 100, in two tiles of 64 queries that read keys in tiles of 64. stock: the
    # first sees cells 0..319 (5 key tiles), the second 0..383 (6). The window is 156..383 (228 cells, its
    # own tiles from 156): the first query tile sees 157..319 of it (view 1..163: tiles 0-2), the second
    # 221..383 (view 65..227: tiles 1-3); grouped, the first sees 0..219 (tiles 0-3), the second 0..283 (0-4)
    stock, exact = cm.prompt_macs_ubatch_lse(s, 256, 128, 100)
    assert stock == 128 * 1000 + per_cell * 64 * 64 * (5 + 6)
    assert exact == 128 * 1000 + per_cell * 64 * 64 * ((3 + 3) + (4 + 5))
    assert cm.prompt_macs_ubatch_lse(s, 8, 8, 40) == (8 * 1000 + per_cell * sum(range(9, 17)),) * 2  # below W
    # a whole prompt: both graphs in the same ubatches
    stock, exact = cm.prompt_macs_lse(s, 1000, 128, 100)
    ubatches = [(p, min(128, 1000 - p)) for p in range(0, 1000, 128)]
    assert (stock, exact) == tuple(map(sum, zip(*(cm.prompt_macs_ubatch_lse(s, p, n, 100) for p, n in ubatches))))


def test_prompt_count_split_costs_less_than_the_whole_cache(cm):
    # the ubatch of 8 at 300..307, W = 40: window 260..307 (48 cells), cells 0..259 before it; the stock
    # graph multiplies 512 cells (307 used, padded to 256), the split one scores the cells before the
    # window padded to 272 and a block of 16 (the log-sum-exp's), the window (48) and the keys that
    # leave it (8), and multiplies 272 + 48 rows of V
    s = cm.Shape(n_layer=2, n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=8, weight_macs=1000)
    stock, exact, _ = cm.prompt_macs_ubatch(s, 300, 8, 40)
    assert stock == 8 * 1000 + 8 * 2 * 4 * 512 * (16 + 8)
    assert exact == 8 * 1000 + 8 * 2 * 4 * (16 * (288 + 48 + 8) + 8 * 320)
    assert exact < stock
    # W = 4 (window 296..307, 12 cells): the padded block would end at 304 + 16 > 308, past the used
    # cells, so the ubatch takes the whole cache's product, and the window's scores once more
    whole = cm.prompt_macs_ubatch(s, 300, 8, 4)
    assert cm.ubatch_window(300, 8, 4) == 12
    assert whole[1] - whole[0] == 8 * 2 * 4 * 16 * (12 + 8)


def test_decode_count(cm):
    s = cm.Shape(n_layer=3, n_head=2, n_head_kv=1, head_dim_k=8, head_dim_v=8, weight_macs=500)
    w = 10
    stock, exact, rotated = cm.decode_macs(s, 25, 1, w)
    # query 25: neighbours 16..25 (10 cells) exact, the key at 15 leaves the window (rotated once)
    assert exact - stock == 3 * 2 * 8 * (10 + 1)
    assert rotated == 3 * 1 * 1
    assert cm.decode_macs(s, 5, 3, w)[0] == cm.decode_macs(s, 5, 3, w)[1]  # positions 5..7 < W: stock


def test_decode_count_with_flash_attention(cm):
    s = cm.Shape(n_layer=3, n_head=2, n_head_kv=1, head_dim_k=8, head_dim_v=8, weight_macs=500)
    stock, exact, moved = cm.decode_macs_fa(s, 300, 1, 10)
    # query 300: the cache is padded to 512 cells, read once by flash attention in both graphs; the 10
    # neighbours and the key at 290 are gathered twice and written twice in each of the 3 layers
    assert stock == exact == 500 + 3 * 2 * 512 * 16
    assert moved == 3 * 4 * 11
    assert cm.decode_macs_fa(s, 5, 3, 10)[0] == cm.decode_macs_fa(s, 5, 3, 10)[1]  # positions < W: stock


def test_cli_prints_the_table(tiny_llama_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_llama_path), "--lengths", "256", "128",
                          "--setting", "2:16", "4:200", "--n-ubatch", "32", "--decode", "4"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 256") or line.startswith("| 128")]
    assert len(rows) == 2
    ub = "128 (512 FA on the CPU)"  # exact mode's ubatches: LongLlama's defaults, unfused and on the CPU's FA path
    assert f"| 128 | 4 | 200 | {ub} | 1.00x | 1.00x | 1.00x | 1.00x | 1.00x | 0 | 0 |" in rows[1]  # W beyond the prompt
    assert rows[0].startswith(f"| 256 | 2 | 16 | {ub} |")
    assert float(rows[0].split("|")[5].strip().rstrip("x")) < 1.0
    # exact mode's window part shrinks with its ubatch: (W + n) columns per query
    def bound(exact_ub: str) -> float:
        out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_llama_path), "--lengths", "256",
                              "--setting", "2:16", "--n-ubatch", "32", "--exact-n-ubatch", exact_ub, "--decode", "4"],
                             capture_output=True, text=True, check=True).stdout
        row = next(line for line in out.splitlines() if line.startswith("| 256"))
        assert row.startswith(f"| 256 | 2 | 16 | {exact_ub} |")
        return float(row.split("|")[5].strip().rstrip("x"))
    assert bound("8") > bound("32") > bound("128")


def test_cli_rejects_bad_setting(tiny_llama_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_llama_path), "--lengths", "256",
                        "--setting", "4x16"], capture_output=True, text=True)
    assert r.returncode == 2 and "G:W" in r.stderr
