"""Layers on other machines: llama.cpp's RPC backend, as ``LongLlama(..., rpc_servers=[...])``.

Each remote machine runs llama.cpp's ``rpc-server`` (``selfextend-gguf rpc-server``), which
offers its devices over TCP. The client registers them the way llama.cpp's own tools do
(``ggml_backend_reg_by_name("RPC")`` and its ``ggml_backend_rpc_add_server``) before the model
loads; ``n_gpu_layers`` and ``tensor_split`` then place layers on them. Both self-extend modes
are plain graph ops and K-shifts, so they run there unchanged.

The protocol has no authentication and no encryption: a server is for a trusted network only.

A server that cannot be reached is refused before anything is loaded
(:class:`~selfextend_gguf.errors.RpcServerError` naming its address). One that goes away
later fails the evaluation in progress with the same error; the patched ggml-rpc no longer
aborts the process then (``patches/0006``).
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from ._native import library_dir, load_llama_cpp
from .errors import RpcServerError, SelfExtendConfigError

llama_cpp = load_llama_cpp()

DEFAULT_PORT = 50052
#: how long the reachability check waits for a TCP connection
CONNECT_TIMEOUT_S = 5.0
_GPU, _IGPU = 1, 2  # enum ggml_backend_dev_type


def parse_endpoints(servers: Union[str, Sequence[str]]) -> List[str]:
    """``servers`` (``"host:port"`` strings, or one comma-separated string) as a checked list.

    Raises:
        SelfExtendConfigError: an entry is not ``host:port`` with a port in 1..65535.
    """
    if isinstance(servers, str):
        servers = servers.split(",")
    endpoints = []
    for entry in servers:
        if not isinstance(entry, str):
            raise SelfExtendConfigError(f"rpc_servers holds {entry!r}; each server is a 'host:port' string")
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or ":" in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SelfExtendConfigError(
                f"RPC server {entry!r} is not 'host:port' (a host name or IPv4 address, which is what "
                f"llama.cpp's RPC client parses, and a port in 1..65535), e.g. '127.0.0.1:{DEFAULT_PORT}'")
        endpoints.append(f"{host}:{int(port)}")
    if not endpoints:
        raise SelfExtendConfigError("rpc_servers is empty; give at least one 'host:port', or leave it out")
    if len(set(endpoints)) != len(endpoints):
        raise SelfExtendConfigError(f"rpc_servers names a server twice: {endpoints}")
    return endpoints


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`RpcServerError` unless a TCP connection to ``endpoint`` opens within ``timeout``.

    ggml-rpc's own connect has no timeout (an unroutable host would hang for minutes) and
    says only that it failed; this names the address and the operating system's reason.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise RpcServerError(
            f"cannot reach the RPC server {endpoint}: {e.strerror or e}. Start it there with "
            f"`selfextend-gguf rpc-server --port {port}` (add --host <its address> to accept other machines), "
            "or fix the address.") from None


class _Ggml:
    """The few ggml registry functions the client needs, from the patched library."""

    def __init__(self) -> None:
        directory = library_dir()
        names = ("libggml.so", "libggml.dylib", "ggml.dll")
        path = next((directory / n for n in names if (directory / n).is_file()), None)
        if path is None:
            raise RpcServerError(f"no libggml in {directory}: the patched library is not installed")
        lib = ctypes.CDLL(str(path), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, restype, argtypes in [
            ("ggml_backend_reg_by_name", vp, [cp]),
            ("ggml_backend_reg_get_proc_address", vp, [vp, cp]),
            ("ggml_backend_reg_dev_count", sz, [vp]),
            ("ggml_backend_reg_dev_get", vp, [vp, sz]),
            ("ggml_backend_reg_name", cp, [vp]),
            ("ggml_backend_dev_count", sz, []),
            ("ggml_backend_dev_get", vp, [sz]),
            ("ggml_backend_dev_type", ctypes.c_int, [vp]),
            ("ggml_backend_dev_backend_reg", vp, [vp]),
        ]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        reg = self.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            raise RpcServerError("this build has no RPC backend: reinstall with the default CMAKE_ARGS "
                                 "(SELFEXTEND_RPC is on unless -DSELFEXTEND_RPC=OFF was given)")
        self.rpc_reg = reg
        self.add_server = self._proc(reg, "ggml_backend_rpc_add_server", vp, [cp])
        self.server_lost = self._proc(reg, "ggml_backend_rpc_server_lost", ctypes.c_bool, [cp])

    def _proc(self, reg: int, name: str, restype: object, argtypes: list) -> ctypes._CFuncPtr:
        address = self.ggml_backend_reg_get_proc_address(reg, name.encode())
        if not address:
            raise RpcServerError(f"the RPC backend lacks {name}: the library is not the patched one")
        return ctypes.CFUNCTYPE(restype, *argtypes)(address)

    def is_rpc(self, device: int) -> bool:
        return self.ggml_backend_reg_name(self.ggml_backend_dev_backend_reg(device)) == b"RPC"


_ggml: "_Ggml | None" = None
#: the devices of every server registered in this process, by endpoint
_registered: Dict[str, List[int]] = {}


def _lib() -> _Ggml:
    global _ggml
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def add_servers(endpoints: Sequence[str]) -> List[int]:
    """Register ``endpoints`` with ggml (once per process) and return their devices, in order.

    Every call checks that each server can be reached: ggml keeps the devices of a server once
    added, and would otherwise only fail to allocate on one that went away since.

    Raises:
        RpcServerError: a server cannot be reached, answers without devices, or its lost connection
            is still held by an older model.
    """
    ggml = _lib()
    devices: List[int] = []
    for endpoint in endpoints:
        check_reachable(endpoint)
        if ggml.server_lost(endpoint.encode()):
            raise RpcServerError(
                f"the connection to the RPC server {endpoint} was lost, and a model made before still holds it "
                "(ggml keeps one connection per server and does not retry a lost one): close that model "
                "(llm.close()), then create this one again.")
        if endpoint not in _registered:
            reg = ggml.add_server(endpoint.encode())
            count = ggml.ggml_backend_reg_dev_count(reg) if reg else 0
            if not count:
                raise RpcServerError(f"the RPC server {endpoint} did not complete the handshake or offers no "
                                     "device: is it an rpc-server of the same llama.cpp version?")
            _registered[endpoint] = [ggml.ggml_backend_reg_dev_get(reg, i) for i in range(count)]
        devices += _registered[endpoint]
    return devices


def model_devices(endpoints: Sequence[str]) -> "ctypes.Array[ctypes.c_void_p] | None":
    """The NULL-terminated device list for ``llama_model_params.devices``: the devices of
    ``endpoints`` first (as llama.cpp orders RPC servers), then the local GPUs (the discrete
    ones, else the integrated ones, as llama.cpp's default selection takes them).

    None without endpoints: llama.cpp's default, which never includes RPC devices, since
    servers are added here without ggml_backend_register (each model names its own).
    """
    if not endpoints:
        return None
    ggml = _lib()
    remote = add_servers(endpoints)
    gpus = _local_gpus(ggml)
    devices = remote + (gpus[_GPU] or gpus[_IGPU])
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)


def _local_gpus(ggml: _Ggml) -> Dict[int, List[int]]:
    """ggml's local devices of each GPU type (discrete, integrated); RPC servers are not local."""
    local = [ggml.ggml_backend_dev_get(i) for i in range(ggml.ggml_backend_dev_count())]
    return {kind: [d for d in local if ggml.ggml_backend_dev_type(d) == kind and not ggml.is_rpc(d)]
            for kind in (_GPU, _IGPU)}


def has_local_gpu() -> bool:
    """Whether ggml has a local GPU (discrete or integrated) to offload layers to; RPC servers do
    not count. A build without the RPC backend is asked through llama.cpp, which counts every
    device that can take layers."""
    try:
        ggml = _lib()
    except (RpcServerError, OSError):  # no RPC backend to count apart, or no libggml of its own
        return bool(llama_cpp.llama_supports_gpu_offload())
    return any(_local_gpus(ggml).values())


def lost_servers(endpoints: Sequence[str]) -> List[str]:
    """The endpoints among ``endpoints`` whose connection has failed."""
    if not endpoints:
        return []
    ggml = _lib()
    return [e for e in endpoints if ggml.server_lost(e.encode())]


def server_program() -> Path:
    """llama.cpp's ``rpc-server``, as built with this package."""
    directory = library_dir().parent / "bin"
    path = directory / ("rpc-server.exe" if sys.platform == "win32" else "rpc-server")
    if not path.is_file():
        raise RpcServerError(f"rpc-server is not built ({path} is missing): reinstall without "
                             "-DSELFEXTEND_RPC=OFF (python3 scripts/bootstrap.py setup)")
    return path


class RpcLlama(llama_cpp.Llama):
    """:class:`llama_cpp.Llama` that can put layers on RPC servers (``rpc_servers``).

    The base of :class:`~selfextend_gguf.LongLlama`; usable alone for the stock model.

    Args:
        rpc_servers: ``"host:port"`` addresses of ``rpc-server`` processes, or one
            comma-separated string. With servers, ``n_gpu_layers`` unset or 0 means all layers
            (none would leave the servers unused).
        **kwargs: What :class:`llama_cpp.Llama` takes.

    Raises:
        SelfExtendConfigError: an address is not ``host:port``.
        RpcServerError: a server cannot be reached; later, one was lost during an evaluation.
    """

    def __init__(self, model_path: str, *, rpc_servers: Optional[Union[str, Sequence[str]]] = None,
                 **kwargs: Any):
        self._rpc_servers = parse_endpoints(rpc_servers) if rpc_servers is not None else []
        if self._rpc_servers and not kwargs.get("n_gpu_layers"):
            kwargs["n_gpu_layers"] = -1  # 0 would leave the servers unused
        self._devices = model_devices(self._rpc_servers)  # before the model loads: see model_params
        super().__init__(model_path=model_path, **kwargs)

    @property
    def model_params(self) -> "llama_cpp.llama_model_params":
        """``Llama``'s model parameters, with llama.cpp's ``devices`` list set.

        ``Llama.__init__`` builds them and loads the model in one go, with no way to pass
        ``devices``; it is set here, when ``Llama`` assigns the parameters.
        """
        try:
            return self.__dict__["_model_params"]
        except KeyError:
            raise AttributeError("model_params") from None

    @model_params.setter
    def model_params(self, params: "llama_cpp.llama_model_params") -> None:
        devices = getattr(self, "_devices", None)
        if devices is not None:
            params.devices = ctypes.cast(devices, ctypes.c_void_p)
        self.__dict__["_model_params"] = params

    def eval(self, tokens: Sequence[int]) -> None:
        """:meth:`llama_cpp.Llama.eval`; :class:`RpcServerError` if a server was lost meanwhile."""
        with self._rpc_checked():
            super().eval(tokens)

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`llama_cpp.Llama.embed` (it decodes without :meth:`eval`), checked the same way."""
        with self._rpc_checked():
            return super().embed(*args, **kwargs)

    def save_state(self) -> "llama_cpp.LlamaState":
        """:meth:`llama_cpp.Llama.save_state`; a lost server's part of the cache would be zeros."""
        with self._rpc_checked():
            return super().save_state()

    @contextlib.contextmanager
    def _rpc_checked(self) -> Iterator[None]:
        """Raise :class:`RpcServerError` after the block if a server of this model was lost in it.

        A lost server fails ``llama_decode`` (a ``RuntimeError`` from llama-cpp-python), or, if
        it went away after the graph was sent, leaves zeros where its results should be.
        """
        try:
            yield
        except RuntimeError as e:
            self._raise_if_lost(e)
            raise
        self._raise_if_lost(None)

    def _raise_if_lost(self, cause: Optional[BaseException]) -> None:
        # remembered: a new model on a restarted server gets a new connection, not this one
        self._lost = getattr(self, "_lost", []) or lost_servers(self._rpc_servers)
        lost = self._lost
        if lost:
            raise RpcServerError(
                f"lost the RPC server{'s' if len(lost) > 1 else ''} {', '.join(lost)} (it crashed, was stopped, "
                "or the network failed): the layers it held are gone, so this model cannot evaluate any more. "
                "Restart the server and create a new model.") from cause
