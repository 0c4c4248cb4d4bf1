"""Audio clips the viewer can play: files from `--audio-dir` and browser uploads.

Security model (issue 6): a browser never names a path on disk. Clips are addressed by a LABEL
that only the server creates (a file name listed from `--audio-dir`, or "upload N: name" for an
upload); a label that is not in the table is refused. Uploads are checked for size before they
are written, written under a private temporary folder with a server-chosen name (the client's
file name is used for display and its extension only), and accepted only if they DECODE as audio
(type is checked by decoding, not trusted from the extension or the browser's MIME type).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm")
"""Extensions accepted from `--audio-dir` and uploads (the content must still decode as audio)."""
"""Rate of the decoded clip (the audio features' rate; also what the browser plays)."""
MAX_CLIP_SECONDS = 300.0
"""Longest clip accepted: its features and browser copy are held in memory."""


@dataclasses.dataclass
class Clip:
    """One decoded clip."""

    label: str
    path: Path
    wav: np.ndarray
    """[T] float32 mono at SAMPLE_RATE."""

    @property
    def duration(self) -> float:
        return self.wav.shape[0] / SAMPLE_RATE

    def wav_bytes(self) -> bytes:
        """The clip as a 16-bit PCM WAV file (every browser plays it)."""
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.clip(self.wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return buf.getvalue()

    def data_url(self) -> str:
        return "data:audio/wav;base64," + base64.b64encode(self.wav_bytes()).decode("ascii")


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB', 100000 -> '100 KB'."""
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{max(n, 0) / 1e3:.0f} KB"


def _safe_display_name(name: str) -> str:
    """Basename of a client-supplied file name, reduced to harmless characters (display only)."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .")
    return base[:80] or "clip"


def check_upload(name: str, size: int, max_bytes: int) -> str:
    """Validate an upload's declared name and size before touching its bytes; return its extension.

    Raises AvatarError (one line) when the file is too large, empty or not an accepted audio type.
    """
    if size <= 0:
        raise AvatarError(f"upload '{_safe_display_name(name)}' is empty")
    if size > max_bytes:
        raise AvatarError(f"upload '{_safe_display_name(name)}' is {format_bytes(size)}, over the "
                          f"{format_bytes(max_bytes)} limit (restart with a larger --max-upload-mb)")
    ext = Path(_safe_display_name(name)).suffix.lower()
    if ext not in AUDIO_EXTENSIONS:
        raise AvatarError(f"upload '{_safe_display_name(name)}' is not an audio file "
                          f"(accepted: {' '.join(AUDIO_EXTENSIONS)})")
    return ext


def decode_clip(path: Path, label: str, max_seconds: float = MAX_CLIP_SECONDS) -> Clip:
    """Decode `path` to 16 kHz mono (any format FFmpeg reads); AvatarError when it is not audio."""
    from avatar.core.audio import load_audio

    wav = load_audio(path, SAMPLE_RATE, max_duration=max_seconds)
    if wav.shape[0] < SAMPLE_RATE // 10:
        raise AvatarError(f"{label}: audio is shorter than 0.1 s")
    return Clip(label=label, path=path, wav=np.ascontiguousarray(wav, np.float32))


class ClipLibrary:
    """Label -> clip table: `--audio-dir` files plus uploads (kept in a private temp folder)."""

    def __init__(self, audio_dir: str | Path | None, max_upload_bytes: int, max_seconds: float = MAX_CLIP_SECONDS):
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_seconds = float(max_seconds)
        self._paths: dict[str, Path] = {}
        self._decoded: dict[str, Clip] = {}
        self._lock = threading.Lock()
        self._n_uploads = 0
        self.upload_dir = Path(tempfile.mkdtemp(prefix="avatar-view-uploads-"))
        if audio_dir is not None:
            d = Path(audio_dir)
            if not d.is_dir():
                raise AvatarError(f"{d}: --audio-dir is not a folder")
            for p in sorted(d.iterdir()):
                if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS:
                    self._paths[p.name] = p.resolve()

    @property
    def labels(self) -> list[str]:
        with self._lock:
            return list(self._paths)

    def get(self, label: str) -> Clip:
        """The decoded clip for a server-made `label` (decoded once, then cached)."""
        with self._lock:
            if label in self._decoded:
                return self._decoded[label]
            path = self._paths.get(label)
        if path is None:
            raise AvatarError(f"unknown clip '{label}'")
        clip = decode_clip(path, label, self.max_seconds)
        with self._lock:
            self._decoded[label] = clip
        return clip

    def add_upload(self, name: str, content: bytes) -> Clip:
        """Validate and store an uploaded file; return its decoded clip (label "upload N: name")."""
        ext = check_upload(name, len(content), self.max_upload_bytes)
        with self._lock:
            self._n_uploads += 1
            n = self._n_uploads
        path = self.upload_dir / f"upload-{n:04d}{ext}"
        path.write_bytes(content)
        label = f"upload {n}: {_safe_display_name(name)}"
        try:
            clip = decode_clip(path, label, self.max_seconds)
        except AvatarError as e:
            path.unlink(missing_ok=True)
            # the first clause of the decoder's message, without the server's temp path
            reason = str(e).split(": ", 1)[-1].split(" (")[0].split(";")[0].replace(str(path), "the file")
            raise AvatarError(f"upload '{_safe_display_name(name)}' is not readable audio ({reason})") from None
        with self._lock:
            self._paths[label] = path
            self._decoded[label] = clip
        return clip

    def close(self) -> None:
        shutil.rmtree(self.upload_dir, ignore_errors=True)
