"""The context-extension methods that the evaluation commands compare, built the same way for all.

A method is named on the command line as ``KIND`` or ``KIND@SETTING``:

- ``none``   -- plain :class:`llama_cpp.Llama`, no extension (the stock library).
- ``linear`` -- llama.cpp's linear position interpolation: ``rope_freq_scale = L / n_ctx``.
- ``yarn``   -- llama.cpp's own YaRN: ``rope_freq_scale = L / n_ctx``, ``yarn_orig_ctx = L``.
- ``shift``, ``exact`` -- :class:`~selfextend_gguf.LongLlama` in that mode; ``shift@auto`` (the same
  as ``shift``) lets :func:`~selfextend_gguf.choose_parameters` pick ``G`` and ``W``,
  ``shift@G4W1024`` fixes them.

``L`` is the model's trained context length. Linear and YaRN scale only when ``n_ctx > L``;
otherwise they are the unmodified model (and say so in their setting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..errors import SelfExtendConfigError
from ..params import MODES, SelfExtendParams, choose_parameters

#: every kind of method, in the order tables list them
KINDS = ("none", "linear", "yarn", "shift", "exact")
ROPE_KINDS = ("linear", "yarn")

_SETTING = re.compile(r"^G(\d+)W(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class MethodSpec:
    """A method as named by the user: its kind and, for self-extend, a fixed ``G``/``W`` or ``None`` (auto)."""

    kind: str
    group_size: Optional[int] = None
    window: Optional[int] = None

    @property
    def label(self) -> str:
        """The name tables and files use: ``none``, ``yarn``, ``shift`` (auto) or ``exact@G4W1024``."""
        if self.group_size is None:
            return self.kind
        return f"{self.kind}@G{self.group_size}W{self.window}"


@dataclass(frozen=True)
class Method:
    """A method resolved for one model and ``n_ctx``: everything needed to build it, and to report it."""

    spec: MethodSpec
    n_ctx: int
    n_ctx_train: int
    self_extend: Optional[SelfExtendParams] = None
    llama_kwargs: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def auto(self) -> bool:
        """True when ``G`` and ``W`` were chosen by :func:`choose_parameters`."""
        return self.kind in MODES and self.spec.group_size is None

    @property
    def setting(self) -> str:
        """Human-readable parameters: ``G=4 W=1024 (auto)``, ``x2.00``, ``-``."""
        if self.self_extend is not None:
            p = self.self_extend
            if not p.enabled:
                return "off (G=1, auto)" if self.auto else "off (G=1)"
            return f"G={p.group_size} W={p.window}" + (" (auto)" if self.auto else "")
        if self.kind in ROPE_KINDS:
            scale = self.llama_kwargs.get("rope_freq_scale")
            return f"x{1 / scale:.2f}" if scale else "off (n_ctx <= trained)"
        return "-"

    def describe(self) -> Dict[str, Any]:
        """The method as a JSON object (for the ``methods`` list of every report)."""
        d: Dict[str, Any] = {"label": self.label, "kind": self.kind, "setting": self.setting,
                             "n_ctx": self.n_ctx, "n_ctx_train": self.n_ctx_train}
        if self.self_extend is not None:
            d.update(mode=self.self_extend.mode, group_size=self.self_extend.group_size,
                     window=self.self_extend.window, auto=self.auto, reach=self.self_extend.reach)
        if self.kind in ROPE_KINDS:
            d.update({k: v for k, v in self.llama_kwargs.items() if k.startswith(("rope_", "yarn_"))})
        return d

    def build(self, model_path: str, **kwargs: Any):
        """A fresh model instance for this method; ``kwargs`` go to :class:`llama_cpp.Llama` as they are.

        Every method gets the same ``n_ctx`` and the same ``kwargs``, so only the method differs.
        """
        from .. import LongLlama
        from ..rpc import RpcLlama

        kwargs = {**kwargs, "n_ctx": self.n_ctx}
        if self.self_extend is not None:
            p = self.self_extend
            return LongLlama(model_path, mode=p.mode, group_size=p.group_size, window=p.window, **kwargs)
        return RpcLlama(model_path, **self.llama_kwargs, **kwargs)


def parse_method(text: str) -> MethodSpec:
    """Parse ``KIND`` or ``KIND@auto`` or ``KIND@G<g>W<w>`` (self-extend kinds only)."""
    kind, _, setting = text.strip().partition("@")
    kind = kind.lower()
    if kind not in KINDS:
        raise SelfExtendConfigError(f"unknown method {text!r}; use one of {', '.join(KINDS)} "
                                    "(self-extend ones optionally as shift@G4W1024 or exact@auto)")
    if not setting or setting.lower() == "auto":
        return MethodSpec(kind)
    if kind not in MODES:
        raise SelfExtendConfigError(f"method {text!r}: only {' and '.join(MODES)} take a G/W setting; "
                                    f"write {kind!r} alone")
    m = _SETTING.match(setting)
    if not m:
        raise SelfExtendConfigError(f"method {text!r}: the setting must look like G4W1024 (or auto)")
    return MethodSpec(kind, int(m.group(1)), int(m.group(2)))


def parse_grid(items: Sequence[str]) -> List[tuple]:
    """Parse ``--grid`` items ``G:W`` into ``(G, W)`` pairs."""
    pairs = []
    for item in items:
        g, sep, w = item.partition(":")
        if not sep or not g.strip().isdigit() or not w.strip().isdigit():
            raise SelfExtendConfigError(f"--grid item {item!r} must be G:W with two integers, e.g. 4:1024")
        pairs.append((int(g), int(w)))
    return pairs


def expand_methods(names: Sequence[str], grid: Sequence[tuple] = ()) -> List[MethodSpec]:
    """The methods to run: ``names`` parsed, plus ``shift@GgWw``/``exact@GgWw`` for each ``(g, w)`` in
    ``grid`` and each self-extend kind among ``names``; duplicates dropped, order kept."""
    specs = [parse_method(n) for n in names]
    kinds = [k for k in MODES if any(s.kind == k for s in specs)]
    for kind in sorted(kinds, key=KINDS.index):
        specs += [MethodSpec(kind, g, w) for g, w in grid]
    seen, out = set(), []
    for s in specs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def resolve(spec: MethodSpec, n_ctx: int, n_ctx_train: int) -> Method:
    """Fix ``spec``'s parameters for ``n_ctx`` on a model trained on ``n_ctx_train`` tokens.

    Raises :class:`SelfExtendConfigError` before anything is loaded if a fixed ``G``/``W``
    cannot reach ``n_ctx``.
    """
    from .. import load_llama_cpp

    if spec.kind in MODES:
        params = choose_parameters(n_ctx, n_ctx_train, group_size=spec.group_size, window=spec.window,
                                   mode=spec.kind)
        return Method(spec, n_ctx, n_ctx_train, self_extend=params)
    kwargs: Dict[str, Any] = {}
    if spec.kind in ROPE_KINDS and n_ctx > n_ctx_train:
        llama_cpp = load_llama_cpp()
        kwargs["rope_freq_scale"] = n_ctx_train / n_ctx
        if spec.kind == "linear":
            kwargs["rope_scaling_type"] = llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR
        else:
            kwargs["rope_scaling_type"] = llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
            kwargs["yarn_orig_ctx"] = n_ctx_train
    return Method(spec, n_ctx, n_ctx_train, llama_kwargs=kwargs)


def resolve_all(specs: Sequence[MethodSpec], n_ctx: int, n_ctx_train: int) -> List[Method]:
    """:func:`resolve` for each spec (so that a bad setting fails before any model is loaded)."""
    return [resolve(s, n_ctx, n_ctx_train) for s in specs]
