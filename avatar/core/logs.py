"""Keep native libraries' log lines out of the user's terminal.

MediaPipe's C++ graphs (glog, TensorFlow Lite) write lines such as "INFO: Created TensorFlow Lite
XNNPACK delegate for CPU" or "W0000 ... Feedback manager requires a model with a single signature"
straight to file descriptor 2, from their own threads and below Python, so neither `warnings` nor
`logging` can stop them, and they bury our progress bars and one-line errors.

`mute_native_stderr()` (called once by the `avatar` console script, never on import) moves Python's
`sys.stderr` to a duplicate of the terminal's fd 2 and points fd 2 itself at /dev/null: everything
Python prints (tqdm bars, warnings, our errors, tracebacks) still reaches the terminal, native
chatter does not. AVATAR_VERBOSE=1 keeps fd 2 as it is (for debugging a native crash).
"""

from __future__ import annotations

import io
import os
import sys
import warnings

# Python-level noise from the protobuf version MediaPipe pins.
warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")


def verbose() -> bool:
    return os.environ.get("AVATAR_VERBOSE", "") not in ("", "0")


def mute_native_stderr() -> bool:
    """Route native writes to fd 2 to /dev/null, keep Python's stderr on the terminal. Returns True if done."""
    if verbose():
        return False
    try:
        sys.stderr.flush()
        keep = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreter, closed stderr)
        return False
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = io.TextIOWrapper(io.FileIO(keep, "w"), encoding=enc, errors="backslashreplace", line_buffering=True,
                                  write_through=True)
    return True
