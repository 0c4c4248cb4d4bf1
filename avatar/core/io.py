"""Atomic file writes: a reader never sees a half-written file that looks complete.

Every writer goes to a temporary name in the same directory, is flushed and fsynced, then renamed
over the destination (`os.replace` is atomic on POSIX).

The temporary file or folder is created with mode 0666 / 0777 filtered by the process umask, exactly
like `open(path, "w")` / `os.mkdir(path)` would create the destination itself. (`tempfile.mkstemp` and
`mkdtemp` create 0600 / 0700 on purpose, for private scratch files; renamed into place, that mode
made every output unreadable to a web server or a colleague.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


def _temp_name(parent: Path, prefix: str, suffix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(6)}{suffix}"


def make_temp_file(parent: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """Create an empty new file in `parent` with the mode a new file gets from the umask; return its path."""
    parent = Path(parent)
    for _ in range(100):
        tmp = _temp_name(parent, prefix, suffix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name in {parent}")


def make_temp_dir(parent: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """Create a new folder in `parent` with the mode a new folder gets from the umask; return its path."""
    parent = Path(parent)
    for _ in range(100):
        tmp = _temp_name(parent, prefix, suffix)
        try:
            os.mkdir(tmp, 0o777)  # the kernel applies the umask
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name in {parent}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on error delete it.

    `suffix` defaults to the destination's suffix so writers that infer the format from the
    extension (cv2.imwrite, ffmpeg) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path.parent, f".{path.name}.", ".tmp" + (suffix if suffix is not None else path.suffix))
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def save_npy_atomic(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array))


def save_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
