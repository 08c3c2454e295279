"""Read what self-extend needs to know about a GGUF file, before llama.cpp loads it.

llama.cpp reports a damaged or foreign file only as "failed to load model"; this
module checks the file first so that the user learns *what* is wrong with it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a GGUF model that parameter choice and validation use."""

    path: Path
    arch: str
    n_ctx_train: int
    name: str = ""
    #: attention heads of the query (the largest layer's where they differ); 0 if the file does not say
    n_head: int = 0
    #: query heads per KV head (the largest layer's where they differ); 0 if the file does not say
    n_gqa: int = 0


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Check that ``path`` is a complete GGUF file and return its metadata.

    Raises :class:`ModelNotFoundError` if it does not exist and
    :class:`ModelFileError` if it is not GGUF, is truncated or lacks the
    architecture's trained context length.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}. Check the path, or use "
                                 "LongLlama.from_pretrained(repo_id, filename) to download one.")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file; pass the path of a .gguf model file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). "
                             "Convert the model with llama.cpp's convert_hf_to_gguf.py, or download a .gguf file.")

    try:
        meta, data_end = _read_header(path)
    except (ValueError, EOFError, struct.error, UnicodeDecodeError, KeyError) as e:
        raise ModelFileError(f"{path} is a damaged or truncated GGUF file ({e}). Download or convert it again.") from e
    size = path.stat().st_size
    if data_end > size:
        raise ModelFileError(f"{path} is truncated: its tensors need {data_end} bytes but the file has {size}. "
                             "Download it again (an interrupted download?).")

    def field(key: str):
        return meta.get(key)

    arch = field("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{path} has no general.architecture key; it is not a llama.cpp model file")
    n_ctx_train = field(f"{arch}.context_length")
    if not isinstance(n_ctx_train, int) or n_ctx_train <= 0:
        raise ModelFileError(f"{path} has no {arch}.context_length key, so its trained context is unknown")
    name = field("general.name")
    heads = field(f"{arch}.attention.head_count")
    n_head = max(heads, default=0) if isinstance(heads, list) else heads  # a list: one count per layer (OpenELM)
    return ModelInfo(path=path, arch=arch, n_ctx_train=int(n_ctx_train), name=name if isinstance(name, str) else "",
                     n_head=int(n_head) if isinstance(n_head, int) and n_head > 0 else 0,
                     n_gqa=_n_gqa(heads, field(f"{arch}.attention.head_count_kv")))


def _n_gqa(heads, heads_kv) -> int:
    """Query heads per KV head, the largest layer's; 0 when the counts are missing or do not divide.

    Either count may be one number or one per layer. A missing KV count means one KV head per
    query head (llama.cpp's default); layers without attention (a count of 0) are skipped.
    """
    if heads_kv is None:
        heads_kv = heads
    lists = [c for c in (heads, heads_kv) if isinstance(c, list)]
    n_layer = len(lists[0]) if lists else 1
    if any(len(c) != n_layer for c in lists):
        return 0
    per_layer = [c if isinstance(c, list) else [c] * n_layer for c in (heads, heads_kv)]
    pairs = [(h, kv) for h, kv in zip(*per_layer) if isinstance(h, int) and isinstance(kv, int) and h > 0 and kv > 0]
    if any(h % kv for h, kv in pairs):
        return 0
    return max((h // kv for h, kv in pairs), default=0)


# GGUF value types (gguf.constants.GGUFValueType) -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: integer arrays up to this length are read (per-layer counts); longer ones (token types) are skipped
_SHORT_ARRAY = 1024


def _read_header(path: Path) -> tuple[dict, int]:
    """Parse the GGUF header: scalar and string metadata, short integer arrays (as lists; other arrays
    are skipped) and where the data ends.

    Hand-written rather than gguf.GGUFReader because it reads only the header,
    in milliseconds, where the reader maps and decodes every array of the file.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        def read(fmt: str):
            n = struct.calcsize(fmt)
            buf = f.read(n)
            if len(buf) != n:
                raise EOFError("unexpected end of file in the header")
            return struct.unpack(fmt, buf)[0]

        def read_str() -> str:
            n = read("<Q")
            if n > 1 << 24:
                raise ValueError(f"implausible string length {n}")
            buf = f.read(n)
            if len(buf) != n:
                raise EOFError("unexpected end of file in the header")
            return buf.decode("utf-8")

        def read_value(vtype: int):
            if vtype in _SCALARS:
                return read(_SCALARS[vtype])
            if vtype == _STRING:
                return read_str()
            if vtype == _ARRAY:
                itype, n = read("<I"), read("<Q")
                if itype in _SCALARS and _SCALARS[itype][-1] in "bBhHiIqQ" and n <= _SHORT_ARRAY:
                    return [read(_SCALARS[itype]) for _ in range(n)]
                if itype in _SCALARS:
                    f.seek(n * struct.calcsize(_SCALARS[itype]), os.SEEK_CUR)
                else:
                    for _ in range(n):
                        read_value(itype)
                return None
            raise ValueError(f"unknown metadata value type {vtype}")

        if f.read(4) != GGUF_MAGIC:
            raise ValueError("bad magic")
        version = read("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = read("<Q"), read("<Q")
        meta = {}
        for _ in range(n_kv):
            key = read_str()
            meta[key] = read_value(read("<I"))
        tensors = []
        for _ in range(n_tensors):
            read_str()
            n_dims = read("<I")
            dims = [read("<Q") for _ in range(n_dims)]
            ttype, offset = read("<I"), read("<Q")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            n_el = 1
            for d in dims:
                n_el *= d
            tensors.append(offset + n_el // block * type_size)
        alignment = meta.get("general.alignment") or 32
        data_start = -(-f.tell() // alignment) * alignment
    return meta, data_start + max(tensors, default=0)
