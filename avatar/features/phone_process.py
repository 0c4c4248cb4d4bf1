"""Phone decoding in a helper process, so that a server's threads are not stopped by it.

pocketsphinx holds Python's GIL for the whole of a decode (measured: a thread decoding 3 s of audio five times
and a thread running a Python loop together took as long as the two one after the other, at 1.0 CPU). In
`avatar serve` the worker decodes one ~1.3 s window per 5 frames (~65 ms on the 2-core CI machine), and every
such decode stopped the render thread and the event loop thread that encodes and sends the WebRTC frames and
audio.
Here the decode runs in a child process (`python -m avatar.features.phone_process`); the calling thread only
writes the samples to a pipe and waits for the answer, which releases the GIL.

The child decodes with the same `avatar.features.phonetic._decode_pcm16` (reset decoder, the same pocketsphinx
build and model), so its classes equal an in-process decode's exactly (tests/test_audio_features.py).

Protocol on the child's stdin/stdout: a request is a little-endian uint32 sample count and that many int16
samples (16 kHz mono); the answer is a uint32 frame count and that many uint8 viseme classes. The child ends
when its stdin closes, i.e. at the latest when the parent process goes away. Idle helpers are kept for the next
user (`acquire` / `release`: a helper starts in ~0.1 s plus the decoder's 0.1-0.4 s) and closed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import struct
import subprocess
import sys
import threading

import numpy as np

_U32 = struct.Struct("<I")


def _read_exact(f, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError("the phone decoder process closed its pipe")
        buf += chunk
    return bytes(buf)


class PhoneProcess:
    """One helper process that decodes phones for one thread at a time (`decode`). Not thread safe: one per
    thread (`phones_in_helper_process`)."""

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self._p = subprocess.Popen([sys.executable, "-m", "avatar.features.phone_process"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0)
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._p.poll() is None

    def decode(self, pcm16: np.ndarray) -> np.ndarray:
        """Viseme class per 10 ms frame ([F] int64) of int16 samples, as `_decode_phones` gives them.
        Raises OSError/EOFError if the process is gone."""
        x = np.ascontiguousarray(pcm16, "<i2")
        with self._lock:
            self._p.stdin.write(_U32.pack(x.size) + x.tobytes())
            (n,) = _U32.unpack(_read_exact(self._p.stdout, 4))
            return np.frombuffer(_read_exact(self._p.stdout, n), np.uint8).astype(np.int64)

    def close(self) -> None:
        try:
            self._p.stdin.close()
        except OSError:
            pass
        try:
            self._p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._p.kill()
            self._p.wait()
        self._p.stdout.close()


_IDLE: list[PhoneProcess] = []
_IDLE_LOCK = threading.Lock()


def acquire() -> PhoneProcess:
    """An idle helper process, or a new one."""
    with _IDLE_LOCK:
        while _IDLE:
            p = _IDLE.pop()
            if p.alive:
                return p
            p.close()
    return PhoneProcess()


def release(p: PhoneProcess) -> None:
    """Give a helper back for the next `acquire` (closed at interpreter exit)."""
    if not p.alive:
        p.close()
        return
    with _IDLE_LOCK:
        _IDLE.append(p)


@atexit.register
def _close_idle() -> None:
    with _IDLE_LOCK:
        idle = list(_IDLE)
        _IDLE.clear()
    for p in idle:
        p.close()


@contextlib.contextmanager
def phones_in_helper_process(feature_meta: dict | None = None):
    """Inside, this thread's phone decoding (`avatar.features.phonetic._decode_phones`) runs in a helper
    process, so it does not hold the GIL: `avatar serve`'s engine thread and `Speaker.run`'s streaming thread use
    it so that rendering and the server's event loop go on while phones are decoded. Same classes as in
    process; if the process dies, decoding falls back to this process. With a run's `feature_meta` whose
    extractor decodes no phones, nothing is started (yields None)."""
    from avatar.features.phonetic import _DECODER_CACHE

    if feature_meta is not None and feature_meta.get("extractor") != "phonetic+spectral":
        yield None
        return
    proc = acquire()
    prev = getattr(_DECODER_CACHE, "helper", None)
    _DECODER_CACHE.helper = proc
    try:
        yield proc
    finally:
        _DECODER_CACHE.helper = prev
        release(proc)


def _serve(stdin, stdout) -> None:
    from avatar.features.phonetic import _decode_pcm16, _phone_decoder

    _phone_decoder()  # build it (0.1-0.4 s) while the parent has nothing to decode yet
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (n,) = _U32.unpack(head)
        pcm = np.frombuffer(_read_exact(stdin, 2 * n), "<i2")
        cls = _decode_pcm16(pcm).astype(np.uint8)
        stdout.write(_U32.pack(cls.size) + cls.tobytes())
        stdout.flush()


if __name__ == "__main__":
    answers = os.fdopen(os.dup(1), "wb", buffering=0)  # the protocol's own copy of stdout ...
    os.dup2(2, 1)  # ... so that anything a library prints cannot corrupt it
    try:
        _serve(sys.stdin.buffer, answers)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
