"""Bad input gets a clear Python exception, never a crash: each case runs in a subprocess,
so that an abort in C fails the test instead of killing the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env}, cwd=os.path.dirname(sys.executable))


def _expect(code: str, exc: str, *needles: str, **env) -> None:
    """The snippet must raise `exc` (by name) with every needle in its message; exit status 3."""
    wrapped = f"""
import sys
try:
{textwrap.indent(textwrap.dedent(code), '    ')}
except Exception as e:
    print(type(e).__name__, '|', e)
    sys.exit(3)
print('no exception')
"""
    r = _run(wrapped, **env)
    assert r.returncode == 3, f"crashed or did not raise (rc={r.returncode}):\n{r.stdout}\n{r.stderr[-2000:]}"
    name, _, message = r.stdout.strip().splitlines()[-1].partition(" | ")
    assert name == exc, r.stdout
    for needle in needles:
        assert needle in message, message


def test_missing_file(tmp_path):
    _expect(f"from selfextend_gguf import LongLlama; LongLlama({str(tmp_path / 'nope.gguf')!r})",
            "ModelNotFoundError", "model file not found", "from_pretrained")


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is a text file, not a model")
    _expect(f"from selfextend_gguf import LongLlama; LongLlama({str(p)!r})",
            "ModelFileError", "not a GGUF file", "convert_hf_to_gguf")


@pytest.mark.parametrize("keep", [0.5, 0.999, 100])
def test_truncated_gguf(tiny_llama_path, tmp_path, keep):
    data = tiny_llama_path.read_bytes()
    p = tmp_path / "truncated.gguf"
    p.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    _expect(f"from selfextend_gguf import LongLlama; LongLlama({str(p)!r})",
            "ModelFileError", "truncated", "again")


def test_config_errors_name_the_fix(tiny_llama_path):
    _expect(f"from selfextend_gguf import LongLlama; LongLlama({str(tiny_llama_path)!r}, n_ctx=4096, group_size=2, window=8)",
            "SelfExtendConfigError", "n_ctx=4096", "group_size >=")
    _expect(f"from selfextend_gguf import LongLlama; LongLlama({str(tiny_llama_path)!r}, n_ctx=128, window=64)",
            "SelfExtendConfigError", "window=64", "trained context length 64")
    _expect(f"from selfextend_gguf import LongLlama; LongLlama({str(tiny_llama_path)!r}, n_ctx=128, group_size=0)",
            "SelfExtendConfigError", "group_size must be >= 1")


def test_library_missing(tmp_path):
    _expect("import selfextend_gguf", "NativeLibraryError", "not built", "bootstrap.py",
            SELFEXTEND_GGUF_LIB_DIR=str(tmp_path))


def test_llama_cpp_imported_first_with_another_library(tmp_path):
    """llama_cpp loaded from elsewhere cannot be swapped in-process: say so."""
    import selfextend_gguf._native as native

    lib = native.library_dir()
    other = tmp_path / "other"
    other.mkdir()
    for f in lib.iterdir():
        (other / f.name).symlink_to(f)
    _expect("import llama_cpp, selfextend_gguf", "NativeLibraryError", "imported before selfextend_gguf",
            "Import selfextend_gguf before llama_cpp", LLAMA_CPP_LIB_PATH=str(other))


def test_mismatched_build(tmp_path):
    """A library built for other bindings is refused before it is loaded."""
    import selfextend_gguf._native as native

    lib = tmp_path / "lib"
    lib.mkdir()
    for f in native.library_dir().iterdir():
        if f.name != "build_info.json":
            (lib / f.name).symlink_to(f)
    (lib / "build_info.json").write_text('{"source_key": "0.3.1-0123456789abcdef"}')
    _expect("import selfextend_gguf", "NativeLibraryError", "0.3.1", "bindings",
            SELFEXTEND_GGUF_LIB_DIR=str(lib))
