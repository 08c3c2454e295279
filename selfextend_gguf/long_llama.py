"""``LongLlama``: a ``llama_cpp.Llama`` that runs past the model's trained context with SelfExtend."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import itertools
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import state as _state
from ._native import load_llama_cpp
from .errors import (
    ContextLengthError,
    ExactModeUnsupportedError,
    InvalidGrammarError,
    InvalidTokenError,
    ModelClosedError,
    ModelFileError,
    ModeFallbackWarning,
    PromptCancelled,
    SelfExtendConfigError,
    SelfExtendError,
    StateError,
    UnsupportedModelError,
)
from .gguf_info import ModelInfo, read_model_info
from .params import SelfExtendParams, as_int, choose_parameters
from .rpc import RpcLlama, has_local_gpu
from .shift import ShiftSchedule
from .ubatch import exact_ubatch, flash_lse_expected

llama_cpp = load_llama_cpp()

#: the mode used when the caller names none: exact, the paper's method, which costs no more than the
#: stock model on the CPU (docs/exact-storage.md); where it refuses a model, shift mode runs instead
DEFAULT_MODE = "exact"

#: ``progress_callback(n_done, n_total)``; returning ``False`` (not ``None``) cancels the evaluation
ProgressCallback = Callable[[int, int], Optional[bool]]

#: ``rpc_servers``: ``"host:port"`` addresses, or one comma-separated string
RpcServers = Optional[Union[str, Sequence[str]]]

#: keyword arguments ``llama_cpp.Llama.__init__`` reads (it swallows any other name in ``**kwargs``)
_LLAMA_KEYWORDS = frozenset(name for name, p in inspect.signature(llama_cpp.Llama.__init__).parameters.items()
                            if name not in ("self", "model_path") and p.kind is not p.VAR_KEYWORD)
#: the ones LongLlama adds
_OWN_KEYWORDS = frozenset(("group_size", "window", "mode", "progress_callback", "rpc_servers"))


def check_keywords(kwargs: Dict[str, Any], caller: str = "LongLlama()") -> None:
    """Raise ``TypeError`` for a keyword that neither LongLlama nor ``llama_cpp.Llama`` knows.

    ``Llama.__init__`` ends in ``**kwargs`` and ignores what it does not know, so a typo such as
    ``mod="exact"`` or ``grop_size=8`` would silently run another mode or the automatic setting.
    """
    valid = _LLAMA_KEYWORDS | _OWN_KEYWORDS
    for name in kwargs:
        if name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see help(LongLlama) for the accepted ones."
            raise TypeError(f"{caller} got an unexpected keyword argument {name!r}{hint}")


def _open_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``method`` to raise :class:`ModelClosedError` after :meth:`LongLlama.close`.

    ``Llama.close`` frees the native model and context but keeps the Python objects around them,
    whose next call hands llama.cpp a NULL pointer and crashes the interpreter.
    """
    @functools.wraps(method)
    def guarded(self: "LongLlama", *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_closed", False):
            raise ModelClosedError(f"{method.__name__}() on a closed LongLlama: close() freed its model and "
                                   "context. Create a new LongLlama to use the model again.")
        return method(self, *args, **kwargs)
    return guarded


class LongLlama(RpcLlama):
    """A drop-in :class:`llama_cpp.Llama` with SelfExtend (arXiv 2401.01325) switched on.

    Args:
        model_path: Path to a GGUF model.
        group_size: ``G``, how many distant positions share one (``j // G``).
            Chosen from ``n_ctx`` and the model's trained length when omitted.
        window: ``W``, how many nearest keys keep their exact positions.
            Chosen automatically when omitted; must be below the trained length.
        mode: ``"exact"`` (the paper's per-query bi-level attention inside the
            llama.cpp graph) or ``"shift"`` (grouped-position KV shifting, as llama.cpp's
            ``--grp-attn-n`` tools do it). When omitted, exact mode; where exact mode
            does not compute the model's attention (logit soft-capping, attention sinks,
            multi-dimensional RoPE, MLA, ...), shift mode runs instead, with a
            :class:`ModeFallbackWarning`. An explicit ``mode`` is never replaced.
        progress_callback: Called as ``progress_callback(n_done, n_total)`` after
            every decoded batch while a prompt is evaluated (any :meth:`eval` of more
            than one token; generation's one-token steps do not report). ``n_done``
            counts the tokens of the sequence now in the cache (a reused prefix
            included) and ends at ``n_total``, the prompt length. Returning ``False``
            stops the evaluation between two batches with :class:`PromptCancelled`;
            what was evaluated stays cached. Also settable later as the
            :attr:`progress_callback` attribute.
        rpc_servers: ``"host:port"`` addresses of llama.cpp ``rpc-server`` processes (or one
            comma-separated string) whose devices take layers, as llama.cpp's ``--rpc``. The
            layers offloaded (``n_gpu_layers``; unset or 0 means all of them when servers are given)
            are split across them by ``tensor_split`` (by their free memory when omitted).
            The protocol has no authentication or encryption: trusted networks only.
        **kwargs: Everything :class:`llama_cpp.Llama` accepts (``n_ctx``,
            ``n_batch``, ``n_gpu_layers``, ``chat_format``, ...). In exact mode, an unset
            ``n_ubatch`` is 128, or smaller where the prompt's score matrix would pass 128 MiB or,
            with flash attention, where the window cannot hold the flash-attention prompt's scratch
            (:func:`selfextend_gguf.ubatch.exact_ubatch`): faster and smaller than 512 there. With
            flash attention and the caches on the CPU (no layer offloaded, no local GPU to take
            them, or ``offload_kqv=False``; and no RPC server) it is the stock 512: that prompt
            builds neither.

    The chosen setting is available as :attr:`self_extend`.

    Raises:
        ModelNotFoundError, ModelFileError: the file is missing, not GGUF, or damaged.
        UnsupportedModelError: the model has no RoPE attention, or recurrent memory; or the
            mode given (or, with none given, both modes) cannot run it
            (:class:`ExactModeUnsupportedError` where exact mode refuses it).
        SelfExtendConfigError: ``group_size``/``window``/``mode``/``n_ctx`` cannot work for the model.
        RpcServerError: an RPC server cannot be reached (or, later, was lost during an evaluation).
        ContextLengthError: (later) a prompt or generation longer than ``n_ctx``.
    """

    def __init__(
        self,
        model_path: Union[str, os.PathLike],
        *,
        group_size: Optional[int] = None,
        window: Optional[int] = None,
        mode: Optional[str] = None,
        progress_callback: Optional[ProgressCallback] = None,
        rpc_servers: RpcServers = None,
        **kwargs: Any,
    ):
        check_keywords(kwargs)
        if progress_callback is not None and not callable(progress_callback):
            raise TypeError(f"progress_callback must be a callable (n_done, n_total) -> bool | None, "
                            f"got {type(progress_callback).__name__}")
        self.progress_callback: Optional[ProgressCallback] = progress_callback
        self._completion_cap: Optional[int] = None
        self._cap_reached = False
        model_path = os.path.expanduser(os.fspath(model_path))  # Llama does not expand "~"
        info = read_model_info(model_path)
        if "n_ctx" in kwargs:  # numpy integers too, as Llama takes them; passed on as a plain int
            kwargs["n_ctx"] = as_int(kwargs["n_ctx"], "n_ctx")
        if kwargs.get("n_ubatch", 0) is None:  # unset, as the server's settings say it: Llama's default
            del kwargs["n_ubatch"]
        n_ctx = kwargs.get("n_ctx", 512) or info.n_ctx_train  # 0: llama.cpp's "the trained length"
        params = choose_parameters(n_ctx, info.n_ctx_train, group_size=group_size, window=window,
                                   mode=DEFAULT_MODE if mode is None else mode)
        self._exact_refusal: Optional[ExactModeUnsupportedError] = None
        try:
            self._open(model_path, info, params, rpc_servers, kwargs)
        except ExactModeUnsupportedError as refusal:
            if mode is not None:
                raise ExactModeUnsupportedError(f"{refusal}. Shift mode may run it: pass mode='shift', or leave mode "
                                                "unset to fall back to shift mode where exact mode refuses") from refusal
            self._exact_refusal = refusal
            params = self._open_in_shift_mode(refusal, model_path, info, n_ctx, group_size, window, rpc_servers,
                                              kwargs)
            try:
                warnings.warn(f"{refusal}. Running shift mode instead (group_size={params.group_size}, "
                              f"window={params.window}); pass mode='shift' to choose it without trying exact mode "
                              "first, or mode='exact' to make this an error.", ModeFallbackWarning, stacklevel=2)
            except BaseException:  # warnings turned into errors: nothing stays open
                self.close()
                raise

    def _open(self, model_path: str, info: ModelInfo, params: SelfExtendParams, rpc_servers: RpcServers,
              kwargs: Dict[str, Any]) -> None:
        """Load the model and create its context (``kwargs`` are ``Llama``'s), then switch ``params`` on.

        Everything is freed again before an error is raised, so that a second ``_open`` can follow.
        """
        self.self_extend: SelfExtendParams = params
        self._requested_n_ctx = params.n_ctx
        self._shift: Optional[ShiftSchedule] = None
        self._n_cached = 0
        self._closed = False
        kwargs = dict(kwargs)
        if params.mode == "exact" and params.enabled and "n_ubatch" not in kwargs:
            n_batch = as_int(kwargs.get("n_batch", 512), "n_batch", minimum=1)
            flash_attn = bool(kwargs.get("flash_attn"))
            flash_lse = flash_attn and flash_lse_expected(kwargs.get("n_gpu_layers", 0), bool(rpc_servers),
                                                          has_local_gpu(), offload_kqv=kwargs.get("offload_kqv", True))
            kwargs["n_ubatch"] = exact_ubatch(params.n_ctx, info.n_head, n_batch, n_gqa=info.n_gqa,
                                              window=params.window, flash_attn=flash_attn, flash_lse=flash_lse)
        try:
            super().__init__(model_path=model_path, rpc_servers=rpc_servers, **kwargs)
            self._check_model()
            self._enable(params)
        except Exception:
            self.close()
            raise

    def _open_in_shift_mode(self, refusal: ExactModeUnsupportedError, model_path: str, info: ModelInfo, n_ctx: int,
                            group_size: Optional[int], window: Optional[int], rpc_servers: RpcServers,
                            kwargs: Dict[str, Any]) -> SelfExtendParams:
        """Shift mode's setting, opened, where no mode was given and exact mode refused the model.

        The model and context are created again rather than kept: exact mode chose the context's
        ``n_ubatch`` for its own graph. Where shift mode cannot run the model or the setting either,
        the error names both reasons.
        """
        try:
            params = choose_parameters(n_ctx, info.n_ctx_train, group_size=group_size, window=window, mode="shift")
        except SelfExtendConfigError as e:
            raise SelfExtendConfigError(
                f"exact mode, the default, refused this model ({refusal}), so shift mode was tried instead, and this "
                f"setting does not suit shift mode: {e} (Exact mode cannot run this model: of that advice, only "
                "shift mode's settings apply.)") from refusal
        try:
            self._open(model_path, info, params, rpc_servers, kwargs)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(
                f"neither mode runs this model. Exact mode, the default, refused it: {refusal}. Shift mode, tried "
                f"instead, refused it too: {e} Use llama_cpp.Llama for it, with n_ctx at most its trained "
                f"{info.n_ctx_train} tokens.") from refusal
        return params

    def n_ctx(self) -> int:
        """The context size: the ``n_ctx`` asked for, not llama.cpp's padded one.

        llama.cpp rounds the cache up (to 256 cells); ``Llama`` then sizes its token and
        logit buffers by the requested ``n_ctx`` but lets prompts and generation run to
        the padded size, silently dropping tokens from ``input_ids`` past the request.
        The request is also what ``group_size`` and ``window`` were validated for.
        """
        padded = super().n_ctx()
        requested = getattr(self, "_requested_n_ctx", None)
        return min(padded, requested) if requested else padded

    def _check_model(self) -> None:
        model = self._model.model
        arch = self.metadata.get("general.architecture", "this model")
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            raise UnsupportedModelError(
                f"{arch} is a recurrent or hybrid model: its memory has no positions to regroup, so "
                "SelfExtend does not apply. Use llama_cpp.Llama for it.")
        if llama_cpp.llama_model_rope_type(model) == llama_cpp.LLAMA_ROPE_TYPE_NONE:
            raise UnsupportedModelError(
                f"{arch} does not use RoPE in its attention, and SelfExtend remaps RoPE positions. "
                "Use llama_cpp.Llama for it (or a RoPE model such as Llama, Qwen, Mistral, Gemma).")

    def _enable(self, params: SelfExtendParams) -> None:
        if not params.enabled:
            return
        self._check_sliding_window(params)
        if params.mode == "shift":
            if not llama_cpp.llama_memory_can_shift(self._ctx.memory):
                raise self._shift_refusal("this model's KV cache cannot shift positions (llama_memory_can_shift is "
                                          "false), which shift mode needs.", "Use mode='exact'.")
            self._shift = ShiftSchedule(params.group_size, params.window)
        else:
            from . import _api

            _api.set_self_extend(self._ctx.ctx, params)

    def _shift_refusal(self, reason: str, advice: str) -> UnsupportedModelError:
        """Shift mode's refusal: ``reason``, then ``advice`` to use exact mode unless exact mode refused the model."""
        return UnsupportedModelError(reason if self._exact_refusal else f"{reason} {advice}")

    def _check_sliding_window(self, params: SelfExtendParams) -> None:
        """Refuse what SelfExtend cannot do right on a model with sliding-window attention (SWA).

        The paper's rule: sliding-window layers stay local (stock), SelfExtend applies to the
        full-attention layers. Exact mode does exactly that. Shift mode cannot: its
        ``llama_memory_seq_div`` moves the cached keys of every layer, the sliding-window ones
        included, so they would see grouped positions inside their window. A model whose layers
        are all sliding-window never meets a distance beyond its window, so there is nothing to
        extend. (Mistral GGUFs with arch ``llama`` are run by llama.cpp as full attention: the
        ``sliding_window`` key is ignored and ``llama_model_n_swa`` is 0, so they pass.)
        """
        model = self._model.model
        n_swa = llama_cpp.llama_model_n_swa(model)
        if n_swa <= 0:
            return
        from . import _api

        arch = self.metadata.get("general.architecture", "this model")
        if not _api.has_self_extend_layers(self._ctx.ctx):
            raise UnsupportedModelError(
                f"every attention layer of {arch} is a sliding-window layer (window {n_swa}): no layer ever sees "
                "a distance beyond its window, so the model needs no extension and SelfExtend would change "
                "nothing. Use llama_cpp.Llama with the n_ctx you need.")
        if params.mode == "shift":
            raise self._shift_refusal(
                f"{arch} has sliding-window attention layers (window {n_swa}). Shift mode divides the cached "
                "positions of every layer (llama_memory_seq_div), so its sliding-window layers would see grouped "
                "positions inside their window, where SelfExtend keeps them stock.",
                "Use mode='exact': it applies SelfExtend to the full-attention layers only.")


    # -- evaluation ---------------------------------------------------------------------------

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` after the first ``self.n_tokens`` ones, as :meth:`llama_cpp.Llama.eval`.

        See :meth:`_eval`. Raises :class:`RpcServerError` if an RPC server of the model was
        lost meanwhile (the evaluation failed, or returned zeros for what that server held).
        """
        try:
            with self._rpc_checked():
                self._eval(tokens)
        except RuntimeError:
            self._sync_after_failed_decode()
            raise

    def _sync_after_failed_decode(self) -> None:
        """After a failed ``llama_decode``, count as cached only what the cache still holds.

        llama.cpp removes the failed batch from the cache, and in exact mode also every position
        from the oldest cell that batch was rewriting in place (its keys leaving the window, and
        with flash attention its window's keys: up to ``window`` tokens before it), which
        ``llama_cpp.Llama`` does not know: the next evaluation then starts from there again.
        """
        ctx = getattr(getattr(self, "_ctx", None), "ctx", None)
        if not ctx:
            return
        held = int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(ctx), 0)) + 1
        self.n_tokens = min(self.n_tokens, max(0, held))
        self._n_cached = min(getattr(self, "_n_cached", 0), self.n_tokens)

    def _eval(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` after the first ``self.n_tokens`` ones, as :meth:`llama_cpp.Llama.eval`.

        In shift mode each full block of ``window`` cached tokens has its
        positions divided by ``group_size`` before the next token is evaluated.

        Raises:
            ContextLengthError: the tokens would not fit in ``n_ctx``; nothing is evaluated.
            PromptCancelled: the progress callback returned ``False``.
        """
        tokens = self._check_tokens(tokens)  # llama_decode would only say "returned -1"
        total = self.n_tokens + len(tokens)
        if total > self._n_ctx:
            raise ContextLengthError(
                f"{total} tokens ({self.n_tokens} cached + {len(tokens)} new) exceed the context window "
                f"n_ctx={self._n_ctx}. {self._context_fix()}")
        report = self.progress_callback if len(tokens) > 1 else None
        if self._shift is None:
            if not tokens:
                super().eval(tokens)
            for i in range(0, len(tokens), self.n_batch):
                super().eval(tokens[i : i + self.n_batch])
                self._n_cached = self.n_tokens
                self._report(report, total)
            return
        schedule = self._shift
        start = schedule.truncation(self.n_tokens, self._n_cached)
        tokens = [*self.input_ids[start : self.n_tokens].tolist(), *tokens]
        self.n_tokens = start
        # positions, not token indices, address the cache: drop everything from the first one re-evaluated
        self._ctx.kv_cache_seq_rm(-1, schedule.position(start, self._n_cached), -1)
        self._n_cached = start
        done = 0
        while done < len(tokens):
            n_past = self.n_tokens
            end = schedule.chunk_end(n_past, n_past + len(tokens) - done, self.n_batch)
            batch = tokens[done : done + end - n_past]
            self._decode(batch, n_past, schedule.position(n_past, n_past))
            done += len(batch)
            self.n_tokens = self._n_cached = end
            if end % schedule.window == 0:
                self._compress_block(end // schedule.window - 1)
            self._report(report, total)

    def _check_tokens(self, tokens: Sequence[int], what: str = "token id") -> List[int]:
        """``tokens`` as ints, or :class:`InvalidTokenError` naming the first one outside the vocabulary."""
        tokens = [int(t) for t in tokens]
        bad = next((t for t in tokens if not 0 <= t < self._n_vocab), None)
        if bad is not None:
            raise InvalidTokenError(f"{what} {bad} is not in this model's vocabulary (ids 0..{self._n_vocab - 1}); "
                                    "make token ids with llm.tokenize(text.encode()), or pass text.")
        return tokens

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        """:meth:`llama_cpp.Llama.detokenize`, refusing ids outside the vocabulary.

        llama.cpp indexes its vocabulary without a bounds check and aborts the process
        (``std::out_of_range``) on such an id. ``prev_tokens`` is not checked: llama-cpp-python's
        tokenizer ignores it.

        Raises:
            InvalidTokenError: an id is negative or not below ``n_vocab()``.
        """
        return super().detokenize(self._check_tokens(tokens), prev_tokens=prev_tokens, special=special)

    def _report(self, callback: Optional[ProgressCallback], total: int) -> None:
        """Tell ``callback`` how far the evaluation is; stop cleanly if it answers ``False``."""
        if callback is not None and callback(self.n_tokens, total) is False:
            raise PromptCancelled(
                f"prompt evaluation cancelled by progress_callback at {self.n_tokens} of {total} tokens; "
                "the evaluated tokens stay cached and the next call reuses them.")

    def _context_fix(self) -> str:
        """The advice that ends a context-length error: how large n_ctx may be, and how to get there."""
        p = self.self_extend
        if p.enabled:
            reach = f"group_size={p.group_size}, window={p.window} reach {p.reach} tokens on this model"
        else:
            reach = f"without grouping (group_size=1) this model reaches its trained {p.n_ctx_train} tokens"
        return (f"Shorten the prompt (or max_tokens), or create the LongLlama with a larger n_ctx ({reach}; "
                "leave group_size unset and LongLlama picks one that reaches the n_ctx you ask for).")

    def _create_completion(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """:meth:`llama_cpp.Llama._create_completion`, checked and bounded.

        - An empty token prompt, token ids and ``logit_bias`` keys outside the vocabulary are
          refused with :class:`InvalidTokenError` (llama-cpp-python would abort in C, or index
          the logits from the end for a negative id).
        - A prompt longer than ``n_ctx`` raises :class:`ContextLengthError`.
        - Generation ends at ``max_tokens`` and at ``n_ctx`` with ``finish_reason="length"``
          and the text so far (whole characters), also when that text ends inside a multi-byte
          character: llama-cpp-python skips its ``max_tokens`` check then, and would decode
          past both limits (see :meth:`generate`).
        """
        bound = inspect.signature(llama_cpp.Llama._create_completion).bind(self, *args, **kwargs).arguments
        prompt = bound.get("prompt")
        if isinstance(prompt, list):
            if not prompt:
                raise InvalidTokenError("the prompt is an empty token list, so there is nothing to continue from; "
                                        "pass at least one token (e.g. [llm.token_bos()]) or a string.")
            self._check_tokens(prompt, "prompt token id")
        self._check_logit_bias(bound.get("logit_bias"))
        self._check_grammar(bound.get("grammar"))
        self._completion_cap = bound.get("max_tokens", 16)
        self._cap_reached = False
        try:
            for chunk in super()._create_completion(*args, **kwargs):
                yield self._finish_at_cap(chunk)
        except ValueError as e:
            m = re.match(r"Requested tokens \((\d+)\) exceed context window", str(e))
            if isinstance(e, SelfExtendError) or not m:
                raise
            # Llama names llama.cpp's padded size; the limit is n_ctx (the server parses this wording)
            raise ContextLengthError(f"Requested tokens ({m[1]}) exceed context window of {self._n_ctx} "
                                     f"(n_ctx={self._n_ctx}). {self._context_fix()}") from e
        finally:
            self._completion_cap = None

    def _check_logit_bias(self, logit_bias: Optional[Dict[Any, float]]) -> None:
        """Refuse ``logit_bias`` keys that are not token ids of this vocabulary."""
        for key in logit_bias or {}:
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise InvalidTokenError(f"logit_bias key {key!r} is not a token id; keys are token ids "
                                        f"0..{self._n_vocab - 1} (from llm.tokenize).") from None
            self._check_tokens([token], "logit_bias token id")

    def _check_grammar(self, grammar: Optional[llama_cpp.LlamaGrammar]) -> None:
        """Refuse a grammar llama.cpp cannot parse: it returns no sampler, which llama-cpp-python
        adds to its sampler chain unchecked (a segfault)."""
        if grammar is None:
            return
        if not isinstance(grammar, llama_cpp.LlamaGrammar):
            raise TypeError(f"grammar must be a llama_cpp.LlamaGrammar (LlamaGrammar.from_string(text)), "
                            f"got {type(grammar).__name__}")
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not sampler:
            raise InvalidGrammarError(f"llama.cpp cannot parse this grammar (root rule {grammar._root!r}); its "
                                      "log above says where. Check the GBNF syntax: every rule used is defined, "
                                      "rule names use letters, digits and '-', no rule is left-recursive.")
        llama_cpp.llama_sampler_free(sampler)

    def _finish_at_cap(self, chunk: Dict[str, Any]) -> Dict[str, Any]:
        """Name the end :meth:`generate` forced at the token limit ``"length"``, as it is."""
        if self._cap_reached:
            for choice in chunk.get("choices", ()):
                if choice.get("finish_reason") == "stop":
                    choice["finish_reason"] = "length"
        return chunk

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
        """:meth:`llama_cpp.Llama.generate`, which yields no token past ``max_tokens`` or ``n_ctx``.

        Inside a completion, once the limit (``max_tokens``, at most ``n_ctx`` minus the prompt)
        has been yielded and another token is asked for, it yields an end-of-generation token
        instead of decoding one more: llama-cpp-python then ends the completion with the text so
        far (dropping a trailing partial character) and :meth:`_create_completion` reports
        ``finish_reason="length"``. Called directly, it stops at ``n_ctx`` the same way.
        """
        tokens = list(tokens)
        self._check_grammar(kwargs.get("grammar"))
        cap, self._completion_cap = self._completion_cap, None  # set by _create_completion, for this call only
        limit = self._n_ctx - len(tokens)
        if cap is not None and cap > 0:
            limit = min(limit, cap)
        inner = super().generate(tokens, *args, **kwargs)
        try:
            sent = None
            for n in itertools.count():
                if n >= limit and n > 0:  # the first token evaluates the prompt, which raises if too long
                    self._cap_reached = True
                    yield self._end_token()
                    return
                token = inner.send(sent)
                sent = yield token
        except StopIteration:
            return
        finally:
            inner.close()

    @functools.cached_property
    def _eog_token(self) -> Optional[int]:
        """A token llama.cpp counts as end of generation (eos, eot, or any), or None if the vocabulary has none."""
        vocab = self._model.vocab
        candidates = [llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)]
        for token in [*candidates, *range(self._n_vocab)]:
            if 0 <= token < self._n_vocab and llama_cpp.llama_vocab_is_eog(vocab, token):
                return token
        return None

    def _end_token(self) -> int:
        token = self._eog_token
        if token is None:
            raise ContextLengthError(f"generation reached its limit (max_tokens or n_ctx={self._n_ctx}), and this "
                                     "model's vocabulary has no end-of-generation token to end it with. "
                                     f"{self._context_fix()}")
        return token

    def _decode(self, batch: List[int], n_past: int, pos: int) -> None:
        """Decode ``batch`` (tokens ``n_past..``) at cache positions ``pos..`` and record it like Llama.eval."""
        self._batch.set_batch(batch=batch, n_past=pos, logits_all=self._logits_all)
        self._ctx.decode(self._batch)
        n = len(batch)
        self.input_ids[n_past : n_past + n] = batch
        if self._logits_all:
            logits = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(n * self._n_vocab,))
            self.scores[n_past : n_past + n, :].reshape(-1)[::] = logits
        self._requires_eval = False

    def _compress_block(self, block: int) -> None:
        """Divide the positions of full block ``block`` (the newest, uncompressed one) by ``G``."""
        g, w = self._shift.group_size, self._shift.window
        first = block * w  # token index of the block's first token
        mem = self._ctx.memory
        # back to its token indices, then divided: tokens t in the block end at t // G
        llama_cpp.llama_memory_seq_add(mem, 0, first // g, first // g + w, first - first // g)
        llama_cpp.llama_memory_seq_div(mem, 0, first, first + w, g)

    def close(self) -> None:
        """Free the model and context (safe on an instance whose __init__ failed, and twice).

        Using the instance afterwards raises :class:`ModelClosedError` instead of crashing.
        """
        if hasattr(self, "_stack"):
            super().close()
        self._closed = True

    def embed(self, input: Union[str, List[str]], *args: Any, **kwargs: Any) -> Any:
        """:meth:`llama_cpp.Llama.embed`; in shift mode, refused for texts longer than the trained context.

        ``Llama.embed`` decodes each text in one batch at positions ``0..n-1``: shift mode regroups
        positions only between batches of :meth:`eval`, so past the trained length an embedding
        would silently be the stock model's. Exact mode groups inside the graph and is extended.

        Raises:
            SelfExtendConfigError: shift mode, and a text longer than the trained context.
        """
        p = self.self_extend
        if self._shift is not None:
            truncate = kwargs.get("truncate", args[1] if len(args) > 1 else True)
            for text in [input] if isinstance(input, str) else input:
                n = len(self.tokenize(text.encode("utf-8")))
                n = min(n, self.n_batch) if truncate else n
                if n > p.n_ctx_train:
                    raise SelfExtendConfigError(
                        f"a text of {n} tokens is longer than the {p.n_ctx_train} tokens this model was trained on, "
                        "and shift mode cannot extend embeddings (they are computed in one batch, with no "
                        "regrouping). Create the LongLlama with mode='exact' (and embedding=True) to embed it.")
        return super().embed(input, *args, **kwargs)

    # -- state --------------------------------------------------------------------------------

    def save_state(self) -> "llama_cpp.LlamaState":
        """:meth:`llama_cpp.Llama.save_state`, sealed with this instance's self-extend setting and a
        checksum (:mod:`selfextend_gguf.state`), which :meth:`load_state` checks."""
        return _state.seal(super().save_state(), self._setting_key())

    def load_state(self, state: "llama_cpp.LlamaState") -> None:
        """Restore a state saved by :meth:`save_state` under the same self-extend setting.

        Raises:
            StateError: the state has no self-extend record (a plain ``Llama``'s), was changed
                since it was saved, or llama.cpp refused it. Nothing is loaded then; if the
                refusal came from llama.cpp, after it may have started writing the cache, the
                instance is emptied (no cached tokens), never left inconsistent.
            SelfExtendConfigError: it was saved under another mode, group_size or window.
        """
        _state.check(state, self._setting_key())
        try:
            super().load_state(state)
        except Exception as e:
            self._forget_cache()
            raise StateError(f"llama.cpp could not load this state ({e}); the instance was emptied. Check that "
                             "it was saved by a LongLlama of the same model and n_ctx.") from e
        self._n_cached = self.n_tokens

    def _forget_cache(self) -> None:
        """Empty the KV cache and the token record together, so that they agree."""
        self._ctx.kv_cache_clear()
        self.n_tokens = 0
        self._n_cached = 0
        self._requires_eval = True

    def _setting_key(self) -> _state.Setting:
        p = self.self_extend
        return (p.mode, p.group_size, p.window) if p.enabled else ("off", 1, 0)

    # -- construction from a model hub ------------------------------------------------------

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        repo_id: str,
        filename: str,
        *,
        additional_files: Optional[List[str]] = None,
        local_dir: Optional[Union[str, os.PathLike]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        revision: Optional[str] = None,
        **kwargs: Any,
    ) -> "LongLlama":
        """Download a GGUF file from a Hugging Face Hub repository (or find it in the local
        hub cache) and open it, as :meth:`llama_cpp.Llama.from_pretrained`.

        ``filename`` may be a glob such as ``"*Q4_K_M.gguf"``; it must match exactly one
        file. Works offline (``HF_HUB_OFFLINE=1``) from the hub cache. The remaining
        keyword arguments, ``group_size``, ``window`` and ``mode`` included, go to
        :class:`LongLlama`.
        """
        check_keywords(kwargs, "LongLlama.from_pretrained()")
        from huggingface_hub import snapshot_download

        patterns = [filename, *(additional_files or [])]
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, revision=revision,
                                        cache_dir=cache_dir, local_dir=local_dir))
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        matches = [f for f in files if fnmatch.fnmatch(f, filename)]
        if len(matches) != 1:
            what = "No file" if not matches else f"{len(matches)} files ({', '.join(matches)})"
            raise ModelFileError(f"{what} in {repo_id} match {filename!r}; available: {files}. "
                                 "Pass the exact file name.")
        return cls(model_path=str(folder / matches[0]), **kwargs)


# Every public method that reaches the native model or context: after close() they raise
# ModelClosedError instead of passing llama.cpp a freed (NULL) pointer.
for _name in ("tokenize", "detokenize", "eval", "generate", "sample", "reset", "create_completion",
              "create_chat_completion", "create_chat_completion_openai_v1", "create_embedding", "embed",
              "save_state", "load_state", "n_ctx", "n_embd", "n_vocab", "token_bos", "token_eos", "token_nl",
              "tokenizer", "pooling_type", "__call__"):
    setattr(LongLlama, _name, _open_only(getattr(LongLlama, _name)))
del _name
