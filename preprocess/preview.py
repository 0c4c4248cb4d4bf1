"""Stage `preview` (--preview): a contact sheet and a short overlay video to check tracking at a glance.

Each frame is drawn with its mask labels tinted, the 478 landmarks as dots, and the fitted head pose
as axes from the head-frame origin (x red, y green, z blue, 5 cm long) projected with the fitted
camera; the overlay video carries the dataset audio so lip sync can be judged too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.core.dataset_format import MASK_LABELS, CameraPose

# RGB tint per label (background untinted)
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "face": (255, 200, 0), "mouth": (255, 0, 80), "eyes": (0, 200, 255), "hair": (150, 80, 255),
    "neck": (0, 255, 120), "torso": (60, 120, 255),
}


def draw_overlay(rgb: np.ndarray, labels: np.ndarray | None, lm: np.ndarray | None, cam: CameraPose | None, k: int,
                 alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 [H, W, 3] with masks, landmarks [478, 2] and frame k's pose axes drawn on it."""
    import cv2
    from avatar.preprocess.pose import project_points

    out = rgb.astype(np.float32)
    if labels is not None:
        lut = np.zeros((256, 3), np.float32)
        tint = np.zeros(256, bool)
        for name, col in LABEL_COLOURS.items():
            lut[MASK_LABELS[name]] = col
            tint[MASK_LABELS[name]] = True
        m = tint[labels][..., None]
        out = np.where(m, (1 - alpha) * out + alpha * lut[labels], out)
    out = np.clip(out, 0, 255).astype(np.uint8)
    scale = max(1, round(min(rgb.shape[:2]) / 256))
    if lm is not None:
        for x, y in np.round(lm).astype(int):
            cv2.circle(out, (int(x), int(y)), scale, (0, 255, 0), -1, lineType=cv2.LINE_AA)
    if cam is not None:
        axes = np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5]], np.float32)
        p = project_points(cam, k, axes)
        if np.isfinite(p).all():
            o = tuple(int(v) for v in np.round(p[0]))
            for j, col in zip(range(1, 4), ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
                cv2.line(out, o, tuple(int(v) for v in np.round(p[j])), col, 2 * scale, cv2.LINE_AA)
    return out


def _load(out: Path, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(out / "frames" / f"{k:06d}.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    labels = cv2.imread(str(out / "masks" / f"{k:06d}.png"), cv2.IMREAD_UNCHANGED)
    return rgb, labels


def write_preview(out: Path, num_frames: int, fps: float, seconds: float = 6.0, has_audio: bool = True,
                  cols: int = 4, rows: int = 3, tile: int = 256, progress: bool = False) -> list[str]:
    """Write preview/contact_sheet.jpg and preview/overlay.mp4; returns their paths relative to `out`."""
    import cv2
    from tqdm import tqdm

    from avatar.core.io import atomic_path
    from avatar.core.video_writer import VideoWriter

    lm = np.load(out / "landmarks.npy", mmap_mode="r")
    cam = CameraPose.load(out / "pose.npz")
    pdir = out / "preview"
    pdir.mkdir(exist_ok=True)
    # contact sheet: evenly spaced frames, each scaled so its long side is `tile`
    picks = np.linspace(0, num_frames - 1, cols * rows).round().astype(int)
    tiles = []
    for k in picks:
        rgb, labels = _load(out, int(k))
        img = draw_overlay(rgb, labels, np.asarray(lm[k]), cam, int(k))
        s = tile / max(img.shape[:2])
        img = cv2.resize(img, (int(round(img.shape[1] * s)), int(round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((tile, tile, 3), np.uint8)
        canvas[:img.shape[0], :img.shape[1]] = img
        cv2.putText(canvas, f"{k}", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(canvas)
    sheet = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], 1) for r in range(rows)], 0)
    with atomic_path(pdir / "contact_sheet.jpg") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    # overlay video of the first `seconds`
    n = min(num_frames, max(1, int(round(seconds * fps))))
    rgb0, _ = _load(out, 0)
    h, w = rgb0.shape[:2]
    wav = None
    if has_audio and (out / "audio.wav").is_file():
        import soundfile as sf

        wav, sr = sf.read(str(out / "audio.wav"), dtype="float32")
        wav = wav[:int(round(n / fps * sr))]
    with VideoWriter(pdir / "overlay.mp4", w, h, fps, audio_rate=SAMPLE_RATE if wav is not None else None, num_frames=n) as vw:
        if wav is not None:
            vw.write_audio(wav)
        for k in tqdm(range(n), desc="preview", unit="frame", disable=not progress, leave=False):
            rgb, labels = _load(out, k)
            vw.write(draw_overlay(rgb, labels, np.asarray(lm[k]), cam, k))
    return ["preview/contact_sheet.jpg", "preview/overlay.mp4"]
