"""Test helpers usable by every part of the project: a tiny synthetic dataset and a tiny trained run.

`make_tiny_dataset(dir)` writes a folder that follows the dataset contract (avatar/core/dataset_format.py) without
MediaPipe or real video: a cartoon head (ellipsoid face with 478 "landmarks", lips, eyes, hair),
neck and shoulders over a gradient plate, turning slightly, opening its mouth with a periodic
"audio" feature and blinking every 10 frames. Everything is consistent: landmarks are the
projections of the posed 3D points, masks use MASK_LABELS, features drive the mouth.

`make_tiny_run(dir)` trains the `tiny` preset for a few iterations on such a dataset (seconds on
CPU) and returns the finished run folder (config.yaml, model.pt, metrics.json).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.core.dataset_format import DATASET_JSON, DATASET_VERSION, MASK_LABELS, CameraPose
from avatar.core.landmarks import CHIN, FOREHEAD, LIPS_INNER, LIPS_OUTER

FEATURE_NAME = "synthetic"


def _face_shape(rng: np.random.Generator) -> np.ndarray:
    """[478, 3] canonical points: front of an ellipsoid (face towards -z, y down), lips, forehead, chin."""
    a, b, c = 1.0, 1.3, 0.8
    pts = np.zeros((478, 3))
    n = 0
    u = rng.uniform(-0.85, 0.85, (2000, 2))
    u = u[(u ** 2).sum(1) < 0.8]
    u = u[~((np.abs(u[:, 0]) < 0.45) & (np.abs(u[:, 1] - 0.45) < 0.2))]  # keep the mouth area for the lips
    pts[:, 0], pts[:, 1] = u[:478, 0] * a, u[:478, 1] * b
    pts[FOREHEAD, :2] = (0, -0.85 * b)
    pts[CHIN, :2] = (0, 0.85 * b)
    for ring, r in ((LIPS_OUTER, (0.35, 0.12)), (LIPS_INNER, (0.25, 0.02))):
        for j, idx in enumerate(ring):
            th = 2 * math.pi * j / len(ring)
            pts[idx, :2] = (r[0] * a * math.cos(th), 0.45 * b + r[1] * b * math.sin(th))
    pts[:, 2] = -c * np.sqrt(np.clip(1 - (pts[:, 0] / a) ** 2 - (pts[:, 1] / b) ** 2, 0.05, None))
    n += 478
    return pts.astype(np.float32)


def _rot_y(angle: float) -> np.ndarray:
    ca, sa = math.cos(angle), math.sin(angle)
    return np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]], np.float32)


def make_tiny_dataset(root: str | Path, num_frames: int = 24, size: int = 64, fps: float = 25.0, seed: int = 0,
                      features: str = "synthetic") -> Path:
    """Write a synthetic dataset folder (contract of avatar/core/dataset_format.py) and return its path.

    features: "synthetic" (8-d [opening, opening^2, noise], recoverable from the audio by
    `avatar.engine.features.synthetic_features`) or "phonetic+spectral" (the real default extractor run on the
    dataset's audio, so `speak` exercises the real feature path end to end, e.g. in bench/speak.py)."""
    import cv2
    import soundfile as sf

    from avatar.core.io import save_npy_atomic, write_json_atomic, write_text_atomic

    root = Path(root)
    for sub in ("frames", "masks", "features"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = _face_shape(rng)
    focal, cx, cy = 1.2 * size, size / 2, size / 2
    k = np.arange(num_frames)
    opening = 0.5 + 0.5 * np.sin(2 * np.pi * k / 12.0)  # [N] mouth opening in [0, 1]
    blink = (k % 10 == 5).astype(np.float32)  # [N]
    Rs = np.stack([_rot_y(0.12 * math.sin(2 * math.pi * i / 20)) for i in k])
    ts = np.tile(np.array([0, -0.1 * size / focal * 4, 5.6], np.float32), (num_frames, 1))

    yy, xx = np.mgrid[0:size, 0:size]
    plate = np.stack([60 + 100 * xx / size, 90 + 60 * yy / size, 140 - 40 * xx / size], -1).astype(np.uint8)  # [H, W, 3]
    cv2.imwrite(str(root / "background.png"), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    landmarks = np.zeros((num_frames, 478, 2), np.float32)
    for i in range(num_frames):
        pts = shape.copy()
        lower_inner = [idx for j, idx in enumerate(LIPS_INNER) if math.sin(2 * math.pi * j / len(LIPS_INNER)) > 0]
        lower_outer = [idx for j, idx in enumerate(LIPS_OUTER) if math.sin(2 * math.pi * j / len(LIPS_OUTER)) > 0]
        pts[lower_inner + lower_outer, 1] += 0.25 * opening[i]
        cam = pts @ Rs[i].T + ts[i]
        uv = cam[:, :2] / cam[:, 2:3] * focal + np.array([cx, cy])
        landmarks[i] = uv
        img, lab = plate.copy(), np.zeros((size, size), np.uint8)

        def fill(poly, colour, label):
            p = np.round(poly * 16).astype(np.int32)
            cv2.fillPoly(img, [p], colour, lineType=cv2.LINE_AA, shift=4)
            cv2.fillPoly(lab, [p], int(label), shift=4)

        centre = uv.mean(0)
        half = (uv.max(0) - uv.min(0)) / 2
        torso = np.array([[0, size], [size, size], [size, centre[1] + 1.3 * half[1]], [0, centre[1] + 1.3 * half[1]]], np.float32)
        fill(torso, (40, 60, 160), MASK_LABELS["torso"])
        neck = np.array([[centre[0] - 0.45 * half[0], centre[1]], [centre[0] + 0.45 * half[0], centre[1]],
                         [centre[0] + 0.5 * half[0], centre[1] + 1.65 * half[1]], [centre[0] - 0.5 * half[0], centre[1] + 1.65 * half[1]]])
        fill(neck, (200, 150, 120), MASK_LABELS["neck"])
        th = np.linspace(0, 2 * np.pi, 40)
        hair = np.stack([centre[0] + 1.15 * half[0] * np.cos(th), centre[1] - 0.15 * half[1] + 1.1 * half[1] * np.sin(th)], 1)
        fill(hair, (70, 40, 20), MASK_LABELS["hair"])
        hull = cv2.convexHull(uv.astype(np.float32))[:, 0]
        fill(hull, (225, 180, 150), MASK_LABELS["face"])
        for ex in (-0.4, 0.4):
            e3 = np.array([[ex + 0.18 * math.cos(a), -0.25 + 0.09 * (1 - blink[i]) * math.sin(a), -0.75] for a in th], np.float32)
            ec = e3 @ Rs[i].T + ts[i]
            fill(ec[:, :2] / ec[:, 2:3] * focal + np.array([cx, cy]), (30, 30, 40), MASK_LABELS["eyes"])
        fill(uv[list(LIPS_OUTER)], (190, 60, 70), MASK_LABELS["face"])
        fill(uv[list(LIPS_INNER)], (90, 20, 30), MASK_LABELS["mouth"])
        cv2.imwrite(str(root / "frames" / f"{i:06d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks" / f"{i:06d}.png"), lab)

    save_npy_atomic(root / "landmarks.npy", landmarks)
    CameraPose(R=Rs, t=ts, focal=focal, cx=cx, cy=cy, shape3d=shape).save(root / "pose.npz")
    save_npy_atomic(root / "blink.npy", blink)
    sr = SAMPLE_RATE
    tt = np.arange(int(num_frames / fps * sr)) / sr
    env = np.interp(tt * fps, k, opening)
    wav = (0.3 * env * np.sin(2 * np.pi * 220 * tt)).astype(np.float32)
    sf.write(str(root / "audio.wav"), wav, sr, subtype="PCM_16")
    if features == "synthetic":
        fname, dim = FEATURE_NAME, 8
        feats = np.concatenate([opening[:, None], opening[:, None] ** 2, 0.05 * rng.normal(size=(num_frames, dim - 2))], 1).astype(np.float32)
        fmeta = {"extractor": "synthetic", "dim": dim, "fps": fps, "window": 1}
    elif features == "phonetic+spectral":
        from avatar.features import extract_features

        fname = "default"
        feats, fmeta = extract_features(sf.read(str(root / "audio.wav"), dtype="float32")[0], num_frames, fps)
    else:
        raise ValueError(f"make_tiny_dataset: features must be 'synthetic' or 'phonetic+spectral', not {features!r}")
    save_npy_atomic(root / "features" / f"{fname}.npy", feats)
    write_json_atomic(root / "features" / f"{fname}.json", fmeta)
    write_text_atomic(root / "preprocess.yaml", "synthetic: true\n")
    n_val = max(1, num_frames // 11)
    meta = {
        "version": DATASET_VERSION,
        "source": {"path": "synthetic", "sha256": "", "fps": fps, "duration": num_frames / fps},
        "fps": fps, "num_frames": num_frames, "width": size, "height": size,
        "camera": {"focal": focal, "cx": cx, "cy": cy},
        "stages": {"synthetic": 1},
        "files": {"frames": "frames", "masks": "masks", "background": "background.png", "landmarks": "landmarks.npy",
                  "pose": "pose.npz", "blink": "blink.npy", "audio": "audio.wav"},
        "features": {fname: {"file": f"features/{fname}.npy", **fmeta}},
        "default_feature": fname,
        "split": {"train": [0, num_frames - n_val], "val": [num_frames - n_val, num_frames]},
        "quality": {}, "has_audio": True,
    }
    write_json_atomic(root / DATASET_JSON, meta)
    return root


def make_tiny_run(root: str | Path, iters: int = 20, num_frames: int = 24, size: int = 64, seed: int = 0,
                  features: str = "synthetic", overrides: dict | None = None) -> Path:
    """Train the `tiny` preset for `iters` steps on a fresh synthetic dataset; return the run folder.
    `features` as in `make_tiny_dataset` ("phonetic+spectral" makes a run that speaks with the real extractor);
    `overrides`: extra dotted config overrides, e.g. {"model.audio_lookahead": 2} (values as text or typed).

    The run folder holds data/ (the synthetic dataset), config.yaml, checkpoints/, model.pt, metrics.json."""
    from avatar.core.config import apply_overrides
    from avatar.train.presets import get_preset
    from avatar.train.trainer import fit

    root = Path(root)
    data = make_tiny_dataset(root / "data", num_frames=num_frames, size=size, seed=seed, features=features)
    cfg = apply_overrides(get_preset("tiny"), {"iters": str(iters), "seed": str(seed)}
                          | dict(overrides or {}))
    fit(cfg, data, root, progress=False)
    return root


# ---- synthetic voices (espeak-ng, a Debian package installed by scripts/install.sh) --------------------------

TTS_SAMPLES: tuple[tuple[str, str, str], ...] = (
    ("en", "en-us", "The quick brown fox jumps over the lazy dog, and then it runs back home again."),
    ("de", "de", "Guten Abend, meine Damen und Herren, hier sind die Nachrichten des heutigen Tages."),
    ("fr", "fr-fr", "Bonjour à tous, voici les informations de la journée, avec le temps qu'il fera demain."),
    ("es", "es", "Buenas noches, estas son las noticias más importantes del día de hoy en todo el país."),
    ("ja", "ja", "こんばんは、きょうのニュースをおつたえします。あしたはぜんこくてきにはれるでしょう。"),
    ("zh", "cmn", "大家好，欢迎收看今天的新闻节目，明天全国大部分地区天气晴朗。"),
)
"""(language, espeak-ng voice, text): one sentence of news-reader speech per language."""


def espeak_available() -> bool:
    import shutil

    return shutil.which("espeak-ng") is not None


def tts_wav(text: str, voice: str, path: str | Path, *, speed_wpm: int = 150, pitch: int = 50) -> Path:
    """Synthesise `text` with espeak-ng's `voice` into a WAV at `path` (espeak-ng's 22.05 kHz mono); returns it.

    espeak-ng is a formant synthesiser (Klatt 1980): a voice unlike any recorded speaker, in ~100 languages,
    offline. Raises RuntimeError when espeak-ng is missing or fails."""
    import subprocess

    path = Path(path)
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (scripts/install.sh installs it with apt)")
    r = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "-w", str(path), text],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not path.is_file() or path.stat().st_size < 1000:
        raise RuntimeError(f"espeak-ng -v {voice} failed: {r.stderr.strip()[:200]}")
    return path


def tts_samples(folder: str | Path) -> list[Path]:
    """One espeak-ng sentence per language of `TTS_SAMPLES` into `folder` (tts_LANG.wav); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [tts_wav(text, voice, folder / f"tts_{lang}.wav") for lang, voice, text in TTS_SAMPLES]
