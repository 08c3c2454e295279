"""`import llama_cpp` first (or alone) loads selfextend-gguf's patched library (issue 16, item 10).

llama-cpp-python is installed as bindings only (``CMAKE_ARGS=-DLLAMA_BUILD=OFF``): it ships no
libllama of its own. The wheel installs ``selfextend_gguf.pth`` next to the package in
site-packages; at interpreter start it sets ``LLAMA_CPP_LIB_PATH`` to the patched library unless
the variable is already set, so that existing ``llama_cpp.Llama`` code runs unchanged and
``selfextend_gguf`` can be imported after it. Each case runs in a fresh interpreter outside the
checkout, without ``LLAMA_CPP_LIB_PATH`` in its environment. (A *different* library loaded first
is refused: tests/test_errors.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PTH = Path(__file__).resolve().parent.parent / "selfextend_gguf.pth"


def _run(code: str, *args: str, python_flags: tuple = (), **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    environ.update(env)
    r = subprocess.run([sys.executable, *python_flags, "-c", textwrap.dedent(code), *args], capture_output=True,
                       text=True, timeout=180, env=environ, cwd=os.path.dirname(sys.executable))
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "Error processing line" not in r.stderr, r.stderr  # a .pth line that raised
    return r.stdout


# llama_cpp bound to the patched library: the library's directory, its self-extend entry point,
# a stock Llama evaluating a prompt, then selfextend_gguf in the same process
_CHECK = """
from pathlib import Path

def check(llama_cpp, model):
    import selfextend_gguf
    from selfextend_gguf._native import library_dir

    loaded = Path(llama_cpp.llama_cpp._base_path).resolve()
    assert loaded == library_dir(), (loaded, library_dir())
    assert hasattr(llama_cpp.llama_cpp._lib, "llama_set_self_extend"), "not the patched libllama"
    llm = llama_cpp.Llama(model, n_ctx=64, n_batch=64, n_threads=1, verbose=False)
    llm.eval(llm.tokenize(b"hello world"))
    assert selfextend_gguf.load_llama_cpp() is llama_cpp
    long = selfextend_gguf.LongLlama(model, n_ctx=128, n_batch=64, n_threads=1, verbose=False)
    long.eval(long.tokenize(b"hello world"))
    assert long.self_extend.group_size > 1
    print("patched", loaded)
"""


def test_llama_cpp_first_loads_the_patched_library(tiny_llama_path):
    """Plain llama_cpp code runs on the patched library; selfextend_gguf imported afterwards works.
    The other order keeps working too."""
    model = str(tiny_llama_path)
    out = _run(_CHECK + f"""
import llama_cpp
from llama_cpp import Llama
assert Llama is llama_cpp.Llama
check(llama_cpp, {model!r})
""")
    assert out.startswith("patched "), out
    out = _run(_CHECK + f"""
import selfextend_gguf
import llama_cpp
check(llama_cpp, {model!r})
""")
    assert out.startswith("patched "), out


def test_development_library_dir_is_used_by_plain_llama_cpp(tiny_llama_path, tmp_path):
    """SELFEXTEND_GGUF_LIB_DIR (a development build) wins over the installed library for llama_cpp too."""
    import selfextend_gguf._native as native

    dev = tmp_path / "dev-lib"
    dev.mkdir()
    for f in native.library_dir().iterdir():
        (dev / f.name).symlink_to(f)
    out = _run(_CHECK + f"""
import llama_cpp
check(llama_cpp, {str(tiny_llama_path)!r})
""", SELFEXTEND_GGUF_LIB_DIR=str(dev))
    assert out.strip() == f"patched {dev.resolve()}", out


def test_another_checkout_is_told_how_to_use_its_own_library(tmp_path):
    """A second copy of the package (a checkout on PYTHONPATH, with its own library) in this
    environment: the installed one's .pth chose LLAMA_CPP_LIB_PATH, so unsetting it would not help."""
    import shutil

    import selfextend_gguf._native as native

    copy = tmp_path / "checkout"
    shutil.copytree(Path(native.__file__).parent, copy / "selfextend_gguf",
                    ignore=shutil.ignore_patterns("lib", "bin", "__pycache__"))
    (copy / "selfextend_gguf" / "lib").mkdir()
    for f in native.library_dir().iterdir():
        (copy / "selfextend_gguf" / "lib" / f.name).symlink_to(f)
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "SELFEXTEND_GGUF_LIB_DIR")}
    r = subprocess.run([sys.executable, "-c", "import selfextend_gguf"], capture_output=True, text=True,
                       timeout=120, env={**env, "PYTHONPATH": str(copy)}, cwd=os.path.dirname(sys.executable))
    assert r.returncode != 0, r.stdout
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("selfextend_gguf.errors.NativeLibraryError"), r.stderr[-2000:]
    assert "selfextend_gguf.pth" in message, message
    assert f"SELFEXTEND_GGUF_LIB_DIR={(copy / 'selfextend_gguf' / 'lib').resolve()}" in message, message


# -- the .pth line itself, exec'd by site.addpackage as at interpreter start -----------------------

_ADDPACKAGE = r"""
import json, os, shutil, site, sys

pth, root = sys.argv[1], sys.argv[2]
results = {}

def case(name, sitedir, **env):
    for key in ("LLAMA_CPP_LIB_PATH", "SELFEXTEND_GGUF_LIB_DIR"):
        os.environ.pop(key, None)
    os.environ.update(env)
    shutil.copy(pth, os.path.join(sitedir, "selfextend_gguf.pth"))
    site.addpackage(sitedir, "selfextend_gguf.pth", set())
    results[name] = os.environ.get("LLAMA_CPP_LIB_PATH")

installed = os.path.join(root, "installed")
os.makedirs(os.path.join(installed, "selfextend_gguf", "lib"))
bare = os.path.join(root, "bare")  # the package without its library
os.makedirs(os.path.join(bare, "selfextend_gguf"))
dev = os.path.join(root, "dev")
os.makedirs(dev)
case("installed", installed)
case("missing", bare)
case("user_path", installed, LLAMA_CPP_LIB_PATH="/somewhere/else")
case("dev", installed, SELFEXTEND_GGUF_LIB_DIR=dev)
case("dev_missing", installed, SELFEXTEND_GGUF_LIB_DIR=os.path.join(root, "nope"))
print(json.dumps(results))
"""


def test_pth_sets_the_library_path_only_when_it_should(tmp_path):
    """-S: the environment's own .pth files stay out of it; only the checkout's is processed."""
    out = _run(_ADDPACKAGE, str(PTH), str(tmp_path), python_flags=("-S",))
    got = json.loads(out)
    assert got == {
        "installed": str(tmp_path / "installed" / "selfextend_gguf" / "lib"),
        "missing": None,  # nothing to point at: llama_cpp's own lookup stays as it was
        "user_path": "/somewhere/else",  # an explicit choice is kept
        "dev": str(tmp_path / "dev"),
        "dev_missing": None,  # the override names no directory: neither it nor the installed one
    }, got


def test_pth_is_one_safe_line():
    """site runs each line starting with 'import' through exec: one, importing nothing but os."""
    lines = [line for line in PTH.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("import os;"), lines
    assert "selfextend_gguf import" not in lines[0] and "llama_cpp import" not in lines[0]
    assert "import llama_cpp" not in lines[0] and "import selfextend_gguf" not in lines[0]
