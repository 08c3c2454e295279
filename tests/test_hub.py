"""LongLlama.from_pretrained against a local Hugging Face hub cache, offline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _make_hub_cache(root, repo_id: str, files: dict) -> None:
    """The on-disk layout huggingface_hub uses: blobs, snapshots/<commit>/<file> -> blob, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040x}"
        blob.write_bytes(data)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(blob)


def _run(code: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(cache))


def test_from_pretrained_offline_passes_self_extend_arguments(tiny_llama_path, tiny_qwen2_path, tmp_path):
    cache = tmp_path / "hub"
    _make_hub_cache(cache, "tiny-org/tiny-models", {
        "tiny-llama.F32.gguf": tiny_llama_path.read_bytes(),
        "sub/tiny-qwen2.F32.gguf": tiny_qwen2_path.read_bytes(),
        "README.md": b"tiny",
    })
    r = _run("""
        from selfextend_gguf import LongLlama
        llm = LongLlama.from_pretrained("tiny-org/tiny-models", "*llama*.gguf", n_ctx=200, group_size=4,
                                        window=16, mode="shift", verbose=False)
        p = llm.self_extend
        print(type(llm).__name__, p.mode, p.group_size, p.window, llm.n_ctx() >= 200, llm.model_path.endswith("tiny-llama.F32.gguf"))
        q = LongLlama.from_pretrained("tiny-org/tiny-models", "sub/tiny-qwen2.F32.gguf", n_ctx=64, verbose=False)
        print(q.metadata["general.architecture"], q.self_extend.group_size)
        try:
            LongLlama.from_pretrained("tiny-org/tiny-models", "*.gguf")
        except ValueError as e:
            print("ambiguous:", "2 files" in str(e))
    """, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "LongLlama shift 4 16 True True"
    assert lines[1] == "qwen2 1"
    assert lines[2] == "ambiguous: True"


def test_from_pretrained_missing_file_offline(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    r = _run("""
        from selfextend_gguf import LongLlama
        try:
            LongLlama.from_pretrained("tiny-org/absent", "*.gguf")
        except Exception as e:
            print(type(e).__name__)
    """, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    # huggingface_hub's own offline error: a clear exception, not a crash or a network call
    assert r.stdout.strip() in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ModelFileError")
