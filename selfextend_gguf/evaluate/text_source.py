"""The long natural text that ``perplexity`` uses by default, fetched from PyPI at benchmark time.

*Botchan (Master Darling)* by Natsume Soseki, translated by Yasotaro Morri (1919), is in the public
domain and ships as ``test/botchan.txt`` inside the source distribution of the ``sentencepiece``
package (its tests train a tokenizer on it): about 50,700 words, some 65,000 tokens for SmolLM2.
We download that sdist with pip (``pip download --no-deps --no-binary :all:``), extract the one
file, strip the Project Gutenberg header and licence, and keep the result in
``$SELFEXTEND_GGUF_CACHE/text`` (default ``~/.cache/selfextend-gguf/text``). Nothing of it is
committed to this repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import EvaluationError

TEXT_PACKAGE = "sentencepiece"
TEXT_VERSION = "0.2.3"
TEXT_MEMBER = "test/botchan.txt"
TEXT_TITLE = "Botchan (Master Darling), Natsume Soseki, tr. Y. Morri (1919), Project Gutenberg #8868"
TEXT_FILE = "botchan.txt"


def cache_dir() -> Path:
    """``$SELFEXTEND_GGUF_CACHE/text``, by default ``~/.cache/selfextend-gguf/text``."""
    root = os.environ.get("SELFEXTEND_GGUF_CACHE") or Path.home() / ".cache" / "selfextend-gguf"
    return Path(root).expanduser() / "text"


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg e-text: between its ``*** START OF`` and ``*** END OF`` lines."""
    lines = text.lstrip("\ufeff").splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("*** START OF")), 0)
    end = next((i for i, line in enumerate(lines) if line.startswith("*** END OF") and i >= start), len(lines))
    body = lines[start:end]
    # drop what follows the story: "End of Project Gutenberg's ...", and transcriber's notes
    # ("[A: Insitent]", indented continuation lines) as Botchan has them after "--(THE END)--"
    while body and (not body[-1].strip() or body[-1].startswith(("End of Project Gutenberg", "[", " "))):
        body.pop()
    return "\n".join(body).strip() + "\n"


def default_text_path() -> Path:
    """Path of the default text, downloading and extracting it on first use.

    Raises :class:`EvaluationError` naming the fix (``--text PATH``) when pip cannot get it.
    """
    target = cache_dir() / TEXT_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{TEXT_PACKAGE}=={TEXT_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob(f"{TEXT_PACKAGE}-{TEXT_VERSION}.tar.gz"))
        if not sdists:
            raise EvaluationError(
                f"could not download the default perplexity text (the {TEXT_PACKAGE}=={TEXT_VERSION} source "
                f"package, which carries {TEXT_MEMBER}): {' '.join(cmd)} said: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}. Check that pip can reach the package index, "
                "or pass a long plain-text file with --text PATH.")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/" + TEXT_MEMBER)), None)
            if member is None:
                raise EvaluationError(f"{sdists[0].name} has no {TEXT_MEMBER}; pass --text PATH instead")
            raw = tar.extractfile(member).read().decode("utf-8-sig")
        part = target.with_suffix(".part")
        part.write_text(strip_gutenberg(raw), encoding="utf-8")
        part.replace(target)
    return target
