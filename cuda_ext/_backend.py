"""Backend selection, lazy loading of the compiled extension, and the debug-dump switch.

`import cuda_ext` never needs the compiled module: it is loaded on the first call that wants it.
Fallbacks warn once per (requested backend, reason) so a training log shows one clear line.
Pattern after gsplat v1.5.3 `gsplat/cuda/_backend.py` (lazy binding) and INRIA's
`diff_gaussian_rasterization/__init__.py` (debug dump of a failing call).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import torch

Backend = Literal["auto", "cuda", "cpu", "torch", "gsplat"]
Resolved = Literal["cuda", "cpu", "torch", "gsplat"]
BACKENDS: tuple[str, ...] = ("auto", "cuda", "cpu", "torch", "gsplat")

DEBUG_DUMP_ENV = "CUDA_EXT_DEBUG_DUMP"  # folder: a failing compiled call saves its inputs there
JIT_ENV = "CUDA_EXT_JIT"  # "1": build the extension with torch.utils.cpp_extension.load when not installed

_ext: Any = None
_ext_error: str | None = None
_ext_tried = False
_warned: set[tuple[str, str]] = set()


def load_ext() -> Any:
    """The compiled module `cuda_ext._C`, or None (the reason is kept for the fallback warning)."""
    global _ext, _ext_error, _ext_tried
    if _ext_tried:
        return _ext
    _ext_tried = True
    try:
        from cuda_ext import _C  # type: ignore[attr-defined]

        _ext = _C
    except ImportError as e:  # not built (no compiler at install time) or ABI mismatch
        _ext_error = f"cuda_ext._C is not built ({e})"
        if os.environ.get(JIT_ENV) == "1":
            try:
                from cuda_ext.build import jit_load

                _ext = jit_load()
                _ext_error = None
            except Exception as e2:  # noqa: BLE001 - report any build failure as a fallback reason
                _ext_error = f"JIT build of cuda_ext failed ({e2})"
    return _ext


def ext_has_cuda() -> bool:
    ext = load_ext()
    return ext is not None and bool(getattr(ext, "WITH_CUDA", False))


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:  # noqa: BLE001 - gsplat may fail at import for many reasons (no CUDA, no packaging)
        return False
    return torch.cuda.is_available()


def available_backends() -> list[str]:
    """Backends that can run on this machine right now (the twin, "torch", is always there)."""
    out = []
    if ext_has_cuda() and torch.cuda.is_available():
        out.append("cuda")
    if load_ext() is not None:
        out.append("cpu")
    out.append("torch")
    if gsplat_available():
        out.append("gsplat")
    return out


def _warn_once(requested: str, reason: str) -> None:
    key = (requested, reason)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"cuda_ext: backend={requested!r} unavailable: {reason}; using the PyTorch twin (slow).",
                  RuntimeWarning, stacklevel=4)


def resolve(backend: str, device: torch.device, op: str) -> Resolved:
    """Pick the backend that runs `op` for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"cuda_ext: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if backend == "gsplat":
        if not on_cuda:
            _warn_once(backend, "gsplat runs on CUDA tensors only")
            return "torch"
        if not gsplat_available():
            _warn_once(backend, "gsplat is not installed (pip install 'avatar[gsplat]')")
            return "torch"
        return "gsplat"
    ext = load_ext()
    if ext is None:
        _warn_once(backend, _ext_error or "cuda_ext._C is not built")
        return "torch"
    if on_cuda:
        if backend == "cpu":
            _warn_once(backend, "tensors are on CUDA")
            return "torch"
        if not ext_has_cuda():
            _warn_once(backend, "cuda_ext._C was built without CUDA (reinstall with a CUDA torch)")
            return "torch"
        return "cuda"
    if device.type != "cpu":
        _warn_once(backend, f"no kernels for device {device.type}")
        return "torch"
    if backend == "cuda":
        _warn_once(backend, "tensors are on the CPU")
        return "torch"
    return "cpu"


def debug_call(op: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a compiled op; when CUDA_EXT_DEBUG_DUMP is set and it raises, save its inputs first.

    The dump is `<dir>/<op>-<time>.pt` holding {"op": op, "args": args}; replay it with
    `cuda_ext.replay(path)`.
    """
    dump_dir = os.environ.get(DEBUG_DUMP_ENV)
    if not dump_dir:
        return fn(*args)
    try:
        out = fn(*args)
    except Exception:
        _dump(dump_dir, op, args)
        raise
    tensors = out if isinstance(out, (tuple, list)) else (out,)
    if any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
        path = _dump(dump_dir, op, args)
        warnings.warn(f"cuda_ext: {op} produced non-finite values; inputs saved to {path}", RuntimeWarning,
                      stacklevel=3)
    return out


def _dump(dump_dir: str, op: str, args: tuple) -> Path:
    folder = Path(dump_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{op}-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**9}.pt"
    cpu_args = tuple(a.detach().cpu() if isinstance(a, torch.Tensor) else a for a in args)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"op": op, "args": cpu_args}, tmp)
    os.replace(tmp, path)  # atomic
    return path


def replay(path: str | os.PathLike, device: str = "cpu") -> Any:
    """Re-run a dumped compiled call (see `debug_call`) and return its outputs."""
    rec = torch.load(path, weights_only=False)
    ext = load_ext()
    if ext is None:
        raise RuntimeError(f"cuda_ext: cannot replay {path}: {_ext_error}")
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in rec["args"])
    return getattr(ext, rec["op"])(*args)
