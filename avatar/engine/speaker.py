"""Audio -> talking video: the `avatar speak` pipeline, offline and streaming, from one engine.

    from avatar.engine.runtime import Avatar
    from avatar.engine.speak import Speaker, SpeakConfig
    sp = Speaker(Avatar.load("runs/NAME"), SpeakConfig(pose="audio", orbit=30))
    sp.render_file("speech.mp3", "out.mp4")                 # H.264 + AAC, frame exact
    for fr in sp.stream(chunks_16k):                        # float32 mono 16 kHz chunks, any size
        show(fr.rgb)                                        # fr.latency_s: chunk arrival -> frame ready

One engine (`_Engine`) serves both: audio is pushed in chunks of any size; a frame is emitted as soon
as everything it depends on is known:
  1. features: computed per *segment* of G frames with P frames of past and F frames of future audio
     context (zero outside the audio), so a frame's features never depend on how the audio was cut
     into chunks. Offline uses long segments (30 s, 1.5 s context, like preprocess's chunking);
     streaming uses short causal ones (`SpeakConfig.stream_segment_frames`).
  2. silence: `SpeechGate` (silero-vad / energy) with `pad_after` frames of look-ahead; non-speech
     rows are replaced by the training clip's silent closed-mouth row (model.md §5).
  3. the model's feature window (`Avatar.feature_window` rows k - past ... k + future, edge padded at
     the clip ends exactly like `Avatar.feature_windows`) needs `Avatar.feature_future` future rows: W//2
     for a centred model, `ModelConfig.audio_lookahead` for one trained with a causal look-ahead.
  4. head pose / blink / camera generators are sequential (avatar/engine/motion.py).
Hence the streaming output equals the offline output frame for frame for the same segment settings,
and the algorithmic delay is (G + F + window look-ahead) frames, reported by `Speaker.delay_s`.

Free-view camera (--orbit, --camera-path): the camera move C_k (training-camera frame -> new camera
frame) is passed to the renderer separately from the head pose H_k (head -> training camera, with the
--yaw/--pitch/--roll offsets). The head is drawn with C_k H_k; the torso is built from H_k in the
training-camera frame (its skinning blends "static" and "follows the head") and then moved by C_k, so
head, neck and torso turn together as one body; the background plate (or --background image) is
re-projected as a plane fronto-parallel to the training camera at `PLATE_DEPTH_FACTOR` x the head's depth
(avatar/engine/runtime.py), edge-clamped where the plate has no pixels. --export-motion records head (H_k
before offsets), camera (C_k) and viewmats (C_k H_k with offsets); replaying head and camera reproduces
the video.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np

from avatar.core.audio import SAMPLE_RATE, iter_audio, probe_audio, rms_envelope
from avatar.core.landmarks import mouth_opening
from avatar.engine.motion import (
    AudioPoseModel,
    BlinkModel,
    CameraPath,
    ConstantBlink,
    FileBlink,
    LoopMode,
    ReplayPose,
    SpeechGate,
    StaticPose,
    apply_head_offset,
    close_mouth,
    load_camera_path,
    orbit_at,
    silent_rows,
)
from avatar.errors import AvatarError

SR = SAMPLE_RATE
FeatureFn = Callable[[np.ndarray, int, float], np.ndarray]
"""(wav16k [T], num_frames, fps) -> [num_frames, D] float32 features, frame j at time j/fps of the wav."""
VadMode = Literal["silero", "energy", "off"]


@dataclasses.dataclass
class SpeakConfig:
    """Controls of `avatar speak` (each becomes a CLI option; see avatar/commands/speak.py)."""

    pose: str = "replay"
    """Head pose: replay (training poses, looped seamlessly), static (mean pose), audio (generated from the
    speech rhythm, learned from the training clip), or an exported motion .npz (its `head` poses)."""
    loop: LoopMode = "crossfade"
    """How `replay` loops: crossfade (blend the clip's end into its start) or pingpong (forwards/backwards)."""
    yaw: float = 0.0
    """Head yaw offset in degrees (+ turns the face towards image right)."""
    pitch: float = 0.0
    """Head pitch offset in degrees (+ nods the chin down)."""
    roll: float = 0.0
    """Head roll offset in degrees (+ tilts the head clockwise in the image)."""
    orbit: float = 0.0
    """Free-view camera: swing the camera around the head by this many degrees peak to peak (0 = training camera)."""
    orbit_period: float = 6.0
    """Seconds per left-right-left orbit swing."""
    camera_path: str | None = None
    """Camera-path file: JSON list of 4x4 world->camera matrices or of {yaw, pitch, roll} degrees, or .npy/.npz."""
    blink: str = "auto"
    """Blinks: auto (rate/duration learned from the training clip), off, or a per-frame file (.npy/.txt/.json/.npz)."""
    lip_scale: float = 1.0
    """Scale of the audio-driven mouth motion (>1 exaggerates, <1 damps articulation)."""
    vad: VadMode = "silero"
    """Voice activity for closing the mouth in silence: silero (silero-vad), energy (RMS threshold) or off."""
    vad_threshold: float = 0.5
    """Speech probability threshold (silero) for a frame to count as speech."""
    energy_db: float = -45.0
    """RMS level in dBFS above which a frame is speech with --vad energy."""
    background: str = "plate"
    """Background: plate (the training background), a colour (name, #RRGGBB or R,G,B), an image file, or transparent."""
    torso: bool = True
    """Render the torso Gaussians."""
    seed: int = 0
    """Random seed of the generated motion (blinks, audio-driven pose)."""
    fps: float | None = None
    """Output frame rate (default: the training fps; other rates re-time features and poses)."""
    batch: int = 8
    """Frames rendered per model call (offline)."""
    segment_s: float = 30.0
    """Offline feature segment length in seconds (bounded memory for hour-long audio)."""
    context_s: float = 1.5
    """Offline audio context on each side of a feature segment."""
    stream_segment_frames: int = 5
    """Streaming: frames per feature segment (smaller = lower delay, more extractor calls)."""
    stream_past_s: float = 1.0
    """Streaming: past audio context of each feature segment."""
    stream_future_frames: int = 2
    """Streaming: future audio context of each feature segment, in frames (part of the delay)."""
    window_lookahead: int | None = None
    """Future feature rows the model's window may use (None = the model's own look-ahead, `Avatar.feature_future`;
    fewer = lower delay, the missing rows are edge-padded as at a clip end, which the model never saw in
    training: prefer a model trained with `--model.audio_lookahead`)."""
    feature_model_dir: str | None = None
    """Local folder of the wav2vec2/HuBERT model when the avatar was trained on such features."""


# ---------------------------------------------------------------------------------------------
# features


def synthetic_features(wav: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """The 8-d "synthetic" feature of `avatar.testing.make_tiny_dataset` computed from audio.

    That dataset's audio is 0.3 * opening(t) * sin(220 Hz t), and its feature rows are
    [opening, opening^2, noise...]; the opening is recovered from the RMS over the frame (x sqrt 2 / 0.3).
    Lets `avatar speak` run end to end on the tiny test avatar; not a speech feature.
    """
    db = rms_envelope(wav, SR, fps, num_frames, win_s=1.0 / fps)
    opening = np.clip(np.sqrt(10 ** (db / 10.0)) * math.sqrt(2) / 0.3, 0.0, 1.0)
    out = np.zeros((num_frames, 8), np.float32)
    out[:, 0] = opening
    out[:, 1] = opening ** 2
    return out


def feature_fn_for(meta: dict, model_dir: str | None = None) -> FeatureFn:
    """The extractor a run was trained with (its feature JSON), as a `FeatureFn`."""
    kind = meta.get("extractor", "")
    if kind == "synthetic":
        return synthetic_features
    from avatar.features.extract import FeatureExtractor

    flat = {k: v for k, v in meta.items() if k != "extra"} | dict(meta.get("extra") or {})
    flat["chunk_s"] = None  # speak cuts the audio into segments itself
    ex = FeatureExtractor.from_meta(flat, model_dir)

    def fn(wav: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        return ex(wav, num_frames, fps)[0]

    return fn


# ---------------------------------------------------------------------------------------------
# training-clip statistics (silent row, pose/blink models)


@dataclasses.dataclass
class TrainingStats:
    """What speak learns from the training clip: the silent closed-mouth feature row and the level track."""

    silent_row: np.ndarray | None  # [D]
    level_db: np.ndarray | None  # [N_train] RMS level per training frame
    source: str
    silent_window: np.ndarray | None = None  # [W, D] the real training window the model renders most closed


def closed_mouth_window(avatar, feats: np.ndarray, level_db: np.ndarray | None, shape3d: np.ndarray) -> np.ndarray | None:
    """[W, D] the training clip's feature window (real, consecutive rows) for which the trained model's
    lips are most closed, among the quietest 30 % of training frames.

    Why not a window of the averaged silent row: a constant window never occurs in training, and on a
    real run (lieu, 15 min) it rendered a half-open mouth (MediaPipe opening 0.070 on 3 s of silence vs
    0.057 median over the clip). The model's predicted inner-lip gap is read from its motion field at
    the canonical landmarks 13/14 (`AvatarModel.point_motion`, the field the landmark motion loss
    trains), which costs one audio-encoder pass over the training windows, no rendering."""
    import torch

    from avatar.core.landmarks import LOWER_INNER_LIP, UPPER_INNER_LIP

    m = avatar.model
    if len(feats) == 0 or shape3d is None:
        return None
    wins = avatar.feature_windows(feats)  # [N, W, D]
    pts = torch.as_tensor(np.asarray(shape3d, np.float32)[[UPPER_INNER_LIP, LOWER_INNER_LIP]], device=avatar.device)
    gaps = []
    with torch.no_grad():
        for i in range(0, wins.shape[0], 256):
            w = wins[i:i + 256]
            x, _ = m.point_motion(pts, m.audio(w), torch.zeros(w.shape[0], device=avatar.device))
            gaps.append(((x[:, 1] - x[:, 0]).norm(dim=-1) / m.unit).cpu().numpy())
    gap = np.concatenate(gaps)
    cand = np.arange(len(gap))
    if level_db is not None and len(level_db) == len(gap):
        cand = cand[np.asarray(level_db) <= np.percentile(level_db, 30)]
    k = int(cand[np.argmin(gap[cand])])
    return wins[k].cpu().numpy().astype(np.float32)


def training_stats(avatar, feature_fn: FeatureFn | None = None) -> TrainingStats:
    """Read the run's dataset folder (recorded in model.pt) for the silent row and the audio level.

    Falls back to the extractor's own features of digital silence when the dataset folder is gone.
    """
    from avatar.core.dataset_format import load_dataset

    root = avatar.core.dataset_format.get("root")
    a, b = (avatar.core.dataset_format.get("train") or [0, len(avatar.train_viewmats)])[:2]
    try:
        info = load_dataset(root)
        name = avatar.feature_meta.get("name") or info.default_feature
        feats = np.asarray(info.feature(name), np.float32)[a:b]
        level = None
        wav_path = info.path("audio.wav")
        if info.has_audio and wav_path.is_file():
            from avatar.core.audio import load_audio

            wav = load_audio(wav_path, sr=SR)
            level = rms_envelope(wav, SR, info.fps, info.num_frames)[a:b]
        mouth = None
        if info.path("landmarks.npy").is_file():
            mouth = mouth_opening(np.asarray(info.landmarks()[a:b]))
        window = None
        try:
            window = closed_mouth_window(avatar, feats, level, info.camera_pose().shape3d)
        except (AvatarError, OSError, KeyError, ValueError):
            window = None
        return TrainingStats(silent_rows(feats, level, mouth), level, str(root), window)
    except (AvatarError, OSError, KeyError, ValueError, TypeError):
        if feature_fn is None:
            return TrainingStats(None, None, "none")
        fps = float(avatar.fps)
        row = feature_fn(np.zeros(int(SR * 2), np.float32), int(2 * fps), fps)[int(fps)]
        return TrainingStats(row.astype(np.float32), None, "extractor(silence)")


# ---------------------------------------------------------------------------------------------
# background


_COLOURS = {"black": (0, 0, 0), "white": (1, 1, 1), "green": (0, 1, 0), "blue": (0, 0, 1), "red": (1, 0, 0),
            "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5)}


def parse_background(spec: str, width: int, height: int):
    """'plate' | 'transparent' | colour | image path -> ('plate'|None|np [3]|np [H, W, 3] in [0, 1], transparent?)."""
    s = spec.strip()
    if s == "plate":
        return "plate", False
    if s == "transparent":
        return None, True
    if s.lower() in _COLOURS:
        return np.array(_COLOURS[s.lower()], np.float32), False
    if s.startswith("#") and len(s) == 7:
        try:
            return np.array([int(s[i:i + 2], 16) for i in (1, 3, 5)], np.float32) / 255.0, False
        except ValueError:
            pass
    if s.count(",") == 2 and not Path(s).exists():
        try:
            v = np.array([float(x) for x in s.split(",")], np.float32)
            return (v / 255.0 if v.max() > 1.0 else v), False
        except ValueError:
            pass
    p = Path(s)
    if p.is_file():
        import cv2

        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise AvatarError(f"{p}: not a readable image for --background")
        img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_AREA)
        return img.astype(np.float32) / 255.0, False
    raise AvatarError(f"--background '{spec}': use plate, transparent, a colour (black, #RRGGBB, R,G,B) or an image file")


# ---------------------------------------------------------------------------------------------
# frames and the engine


@dataclasses.dataclass
class SpokenFrame:
    """One output frame. rgb [H, W, 3] uint8 (rgba [H, W, 4] when the background is transparent)."""

    index: int
    rgb: np.ndarray
    time_s: float
    latency_s: float = 0.0
    """Wall time from the arrival of the audio chunk that completed this frame's inputs to the frame being ready."""


class _PoseFromFile:
    def __init__(self, path: str):
        p = Path(path)
        try:
            z = np.load(p, allow_pickle=False)
            self.head = np.asarray(z["head"], np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise AvatarError(f"{p}: --pose expects replay, static, audio or an exported motion .npz with 'head' ({type(e).__name__})") from None
        if self.head.ndim != 3 or self.head.shape[1:] != (4, 4) or len(self.head) == 0:
            raise AvatarError(f"{p}: 'head' must be [N, 4, 4]")

    def pose(self, k: int, level_db: float | None = None) -> np.ndarray:
        return self.head[min(k, len(self.head) - 1)]


class _Engine:
    """Push audio, pop frames. See the module docstring for what each frame waits for."""

    def __init__(self, sp: "Speaker", seg_frames: int, past_frames: int, future_frames: int):
        self.sp = sp
        self.fps = sp.fps
        self.G, self.P, self.F = int(seg_frames), int(past_frames), int(future_frames)
        self.spf = SR / self.fps  # samples per frame
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # absolute sample index of buf[0]
        self.total = 0  # samples pushed
        self.ended = False
        self.num_frames: int | None = None
        self.rows: dict[int, np.ndarray] = {}  # gated feature rows by frame
        self.weights: dict[int, float] = {}  # speech weight by frame (1 speech, 0 silence, ramps between)
        self.raw_rows_computed = 0  # frames whose raw features exist
        self.raw: dict[int, np.ndarray] = {}
        self.gated_upto = 0
        self.emitted = 0
        self.gate = sp._make_gate()
        self.pose_gen = sp._make_pose()
        self.blink_gen = sp._make_blink()
        W = sp.avatar.feature_window
        self.win_after = int(getattr(sp.avatar, "feature_future", W - 1 - W // 2))  # the model's look-ahead
        self.r = W - 1 - self.win_after  # past rows of the window
        self.look = sp.window_look()
        self.speech_frames = 0
        self.record = sp._record  # motion export lists (or None)

    # -- audio in -------------------------------------------------------------------------------
    def push(self, wav: np.ndarray) -> None:
        wav = np.asarray(wav, np.float32).ravel()
        if wav.size == 0:
            return
        self.buf = np.concatenate([self.buf, wav])
        self.total += wav.shape[0]
        if self.gate is not None:
            self.gate.push(wav)

    def end(self) -> None:
        self.ended = True
        self.num_frames = int(round(self.total / SR * self.fps))
        if self.gate is not None:
            self.gate.end()

    def _audio(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) (absolute), zero outside [0, total)."""
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, self.buf_start), min(b, self.buf_start + self.buf.shape[0])
        if hi > lo:
            out[lo - a:hi - a] = self.buf[lo - self.buf_start:hi - self.buf_start]
        return out

    # -- features -------------------------------------------------------------------------------
    def _compute_segments(self) -> None:
        while True:
            a = self.raw_rows_computed
            if self.num_frames is not None and a >= self.num_frames:
                return
            b = a + self.G
            s1 = int(round((b + self.F) * self.spf))
            if not self.ended and s1 > self.total:
                return
            # No padding before the audio start, and none past end + F frames: long stretches of
            # artificial silence would skew the extractor's per-utterance normalisation.
            fa = max(a - self.P, 0)
            fb = b + self.F if self.num_frames is None else min(b, self.num_frames) + self.F
            seg = self._audio(int(round(fa * self.spf)), int(round(fb * self.spf)))
            feats = np.asarray(self.sp.feature_fn(seg, fb - fa, self.fps), np.float32)
            for j in range(a, b if self.num_frames is None else min(b, self.num_frames)):
                self.raw[j] = feats[j - fa]
            self.raw_rows_computed = b

    def _gate_rows(self) -> None:
        n = self.num_frames
        while self.gated_upto < self.raw_rows_computed and (n is None or self.gated_upto < n):
            k = self.gated_upto
            if self.gate is None or self.sp.stats.silent_row is None:
                w = 1.0
                speech = True
            else:
                nxt = k + 1 if n is None else min(k + 1, n - 1)
                if not (self.gate.ready(k, n) and self.gate.ready(nxt, n)):
                    return
                speech = self.gate.speech(k)
                # 3-frame box over the speech flags: a one-frame ramp in and out of silence
                nb = [self.gate.speech(j) for j in (k - 1, k, k + 1) if j >= 0 and (n is None or j < n)]
                w = float(np.mean(nb)) if nb else float(speech)
            row = self.raw.pop(k)
            self.rows[k] = close_mouth(row, self.sp.stats.silent_row, w) if self.sp.stats.silent_row is not None else row
            self.weights[k] = w
            self.speech_frames += int(speech)
            if self.record is not None:
                self.record["speech"].append(float(w))
                self.record["feats"].append(self.rows[k])
            self.gated_upto += 1

    # -- frames out -----------------------------------------------------------------------------
    def ready_count(self) -> int:
        """How many frames (from `emitted`) can be rendered now."""
        self._compute_segments()
        self._gate_rows()
        n = self.num_frames
        last = self.gated_upto - 1  # highest frame with a final row
        if n is not None and self.gated_upto >= n:
            return n - self.emitted
        # frame k needs rows up to k + look (those exist only if < gated_upto) and its level window
        return max(0, last - self.look + 1 - self.emitted)

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """Windows [B, W, D], head viewmats [B, 4, 4] (head -> training camera), camera moves [B, 4, 4]
        (training camera -> output camera) and blinks [B] for the next `count` frames."""
        n = self.num_frames
        W = self.r + self.win_after + 1
        wins, vms, cams, blinks, idx = [], [], [], [], []
        for _ in range(count):
            k = self.emitted
            hi = (n - 1) if n is not None else None
            rows = []
            for o in range(-self.r, W - self.r):
                j = max(0, k + min(o, self.look))
                if hi is not None:
                    j = min(j, hi)
                rows.append(self.rows[j])
            win = np.stack(rows)
            sw, wk = self.sp.stats.silent_window, self.weights.get(k, 1.0)
            if sw is not None and wk < 1.0 and sw.shape == win.shape:
                # silence: the real training window the model renders most closed (`closed_mouth_window`),
                # cross-faded over the gate's one-frame ramp
                win = (wk * win + (1.0 - wk) * sw).astype(np.float32)
            wins.append(win)
            level = None
            if self.sp.needs_level:
                c = int(round(k * self.spf))
                half = int(round(self.spf))
                seg = self._audio(c - half, c + half)
                level = float(10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-10))
            head = self.pose_gen.pose(k, level)
            vm = self.sp._view(k, head)
            cam = self.sp._camera(k)
            vms.append(vm)
            cams.append(cam)
            blinks.append(self.blink_gen.value(k))
            if self.record is not None:
                self.record["head"].append(head)
                self.record["viewmats"].append((cam @ vm).astype(np.float32))
                self.record["camera"].append(cam)
                self.record["blink"].append(blinks[-1])
            idx.append(k)
            self.emitted += 1
        self._trim()
        return np.stack(wins), np.stack(vms), np.stack(cams), np.asarray(blinks, np.float32), idx

    def _trim(self) -> None:
        """Drop rows and audio no later frame can need (memory stays bounded)."""
        k = self.emitted
        for j in [j for j in self.rows if j < k - self.r - 1]:
            del self.rows[j]
        for j in [j for j in self.weights if j < k]:
            del self.weights[j]
        keep_from = min(int(round((self.raw_rows_computed - self.P) * self.spf)), int(round((k - 2) * self.spf)))
        drop = keep_from - self.buf_start
        if drop > 0:
            self.buf = self.buf[drop:]
            self.buf_start += drop


class Speaker:
    """Render an avatar speaking: `render_file` (mp4 / PNG sequence), `frames` (offline iterator),
    `stream` (chunks in, frames out)."""

    def __init__(self, avatar, cfg: SpeakConfig | None = None, feature_fn: FeatureFn | None = None,
                 stats: TrainingStats | None = None):
        self.avatar = avatar
        self.cfg = cfg or SpeakConfig()
        c = self.cfg
        self.fps = float(c.fps or avatar.fps)
        if not (0 < self.fps <= 120):
            raise AvatarError(f"--fps must be in (0, 120], got {self.fps}")
        self.feature_fn = feature_fn or feature_fn_for(avatar.feature_meta, c.feature_model_dir)
        self.stats = stats or training_stats(avatar, self.feature_fn)
        self.train_viewmats = avatar.train_viewmats.detach().cpu().numpy().astype(np.float32)  # [N, 4, 4]
        self.train_blink = avatar.train_blink.detach().cpu().numpy().astype(np.float32)  # [N]
        self.pivot = self.train_viewmats[:, :3, 3].mean(axis=0)  # mean head position in the camera frame
        self.bg, self.transparent = parse_background(c.background, avatar.width, avatar.height)
        if self.bg is not None and not isinstance(self.bg, str):
            import torch

            self.bg = torch.as_tensor(self.bg, device=avatar.device)
        self.camera_path: CameraPath | None = load_camera_path(c.camera_path, self.pivot) if c.camera_path else None
        if c.pose not in ("replay", "static", "audio") and not Path(c.pose).is_file():
            raise AvatarError(f"--pose '{c.pose}': use replay, static, audio, or an exported motion .npz file")
        if c.blink not in ("auto", "off") and not Path(c.blink).is_file():
            raise AvatarError(f"--blink '{c.blink}': use auto, off, or a per-frame blink file (no such file)")
        if c.lip_scale < 0 or not math.isfinite(c.lip_scale):
            raise AvatarError(f"--lip-scale must be >= 0, got {c.lip_scale}")
        self.needs_level = c.pose == "audio"
        self._pose_model: AudioPoseModel | None = None
        self._blink_model: BlinkModel | None = None
        self._record: dict | None = None
        self.last_stats: dict = {}

    # -- factories (fresh state per render) -----------------------------------------------------
    def _make_gate(self) -> SpeechGate | None:
        c = self.cfg
        if c.vad == "off":
            return None
        return SpeechGate(self.fps, kind=c.vad, threshold=c.vad_threshold, energy_db=c.energy_db)

    def _make_pose(self):
        c = self.cfg
        train_fps = float(self.avatar.fps)
        if c.pose == "replay":
            rp = ReplayPose(self.train_viewmats, loop=c.loop)
            if abs(train_fps - self.fps) < 1e-6:
                return rp

            class _Retimed:  # play the training poses at their own speed whatever the output fps
                def pose(_, k, level=None):
                    return rp.pose(int(round(k * train_fps / self.fps)))

            return _Retimed()
        if c.pose == "static":
            return StaticPose(self.train_viewmats)
        if c.pose == "audio":
            if self._pose_model is None:
                lvl = self.stats.level_db
                self._pose_model = AudioPoseModel.fit(self.train_viewmats, train_fps,
                                                      lvl if lvl is not None and len(lvl) == len(self.train_viewmats) else None)
            # the coarse step is ~0.2 s whatever the output fps (the AR dynamics are per step)
            return dataclasses.replace(self._pose_model, step_frames=max(1, int(round(self.fps / 5.0)))).generator(self.cfg.seed)
        return _PoseFromFile(c.pose)

    def _make_blink(self):
        c = self.cfg
        if c.blink == "off":
            base = float(np.median(self.train_blink)) if self.train_blink.size else 0.0
            return ConstantBlink(base)
        if c.blink == "auto":
            if self._blink_model is None:
                self._blink_model = BlinkModel.fit(self.train_blink, float(self.avatar.fps))
            m = dataclasses.replace(self._blink_model, fps=self.fps)
            return m.generator(self.cfg.seed)
        return FileBlink(c.blink)

    def _camera(self, k: int) -> np.ndarray:
        c = self.cfg
        M = np.eye(4, dtype=np.float32)
        if self.camera_path is not None:
            M = self.camera_path.at(k)
        if c.orbit:
            M = orbit_at(k, c.orbit, self.pivot, self.fps, c.orbit_period) @ M
        return M

    def _view(self, k: int, head: np.ndarray) -> np.ndarray:
        """Head -> training camera for frame k: the pose plus the --yaw/--pitch/--roll offsets (the camera
        move is separate, `_camera`)."""
        c = self.cfg
        return np.asarray(apply_head_offset(np.asarray(head, np.float32), c.yaw, c.pitch, c.roll), np.float32)

    # -- delays ---------------------------------------------------------------------------------
    def _stream_params(self) -> tuple[int, int, int]:
        c = self.cfg
        return max(1, int(c.stream_segment_frames)), int(math.ceil(c.stream_past_s * self.fps)), max(1, int(c.stream_future_frames))

    def _offline_params(self) -> tuple[int, int, int]:
        c = self.cfg
        return max(1, int(round(c.segment_s * self.fps))), int(math.ceil(c.context_s * self.fps)), max(1, int(math.ceil(c.context_s * self.fps)))

    def delay_s(self, streaming: bool = True) -> float:
        """Algorithmic delay (worst case, excluding compute): how much audio must have arrived beyond a
        frame's time before that frame can be rendered. Frame k needs the feature rows up to k + L (L =
        window look-ahead), i.e. its segment's end (<= G frames on) plus F frames of future context, and
        the silence gate's decisions up to k + L + 3 (2 frames padding + the 1-frame ramp)."""
        G, _, F = self._stream_params() if streaming else self._offline_params()
        gate = 3.5 if self.cfg.vad != "off" else 0.0
        return (self.window_look() + max(G + F, gate)) / self.fps

    def window_look(self) -> int:
        """Future feature rows a frame waits for: the model's look-ahead (`Avatar.feature_future`, trained),
        optionally clamped lower by `SpeakConfig.window_lookahead`."""
        W = self.avatar.feature_window
        future = int(getattr(self.avatar, "feature_future", W - 1 - W // 2))
        if self.cfg.window_lookahead is None:
            return future
        return max(0, min(future, int(self.cfg.window_lookahead)))

    # -- rendering ------------------------------------------------------------------------------
    def _render(self, eng: _Engine, count: int) -> list[tuple[int, np.ndarray]]:
        import torch

        wins, vms, cams, blinks, idx = eng.take(count)
        av = self.avatar
        moving = self.camera_path is not None or bool(self.cfg.orbit)
        out = av.render(torch.as_tensor(wins, device=av.device), torch.as_tensor(vms, device=av.device),
                        torch.as_tensor(blinks, device=av.device), background=self.bg, lip_scale=self.cfg.lip_scale,
                        torso=self.cfg.torso, camera=torch.as_tensor(cams, device=av.device) if moving else None)
        rgb = out["rgb"]
        if self.transparent:
            a = out["alpha"]
            straight = torch.where(a > 1e-4, rgb / a.clamp_min(1e-4), torch.zeros_like(rgb)).clamp(0, 1)
            img = torch.cat([straight, a], dim=-1)
        else:
            img = rgb
        arr = (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
        return list(zip(idx, arr))

    def _run(self, chunks: Iterable[np.ndarray], streaming: bool, batch: int, record: bool = False) -> Iterator[SpokenFrame]:
        G, P, F = self._stream_params() if streaming else self._offline_params()
        self._record = {k: [] for k in ("head", "viewmats", "camera", "blink", "speech", "feats")} if record else None
        eng = _Engine(self, G, P, F)
        self.engine = eng  # exposed for introspection (tests check its buffers stay bounded)
        lat: list[float] = []
        t_start = time.perf_counter()
        for chunk in chunks:
            t0 = time.perf_counter()
            eng.push(chunk)
            while True:
                n = eng.ready_count()
                if n <= 0 or (not streaming and n < batch):
                    break
                for k, img in self._render(eng, min(n, batch)):
                    dt = time.perf_counter() - t0
                    lat.append(dt)
                    yield SpokenFrame(k, img, k / self.fps, dt)
        eng.end()
        if eng.num_frames == 0:
            raise AvatarError("the audio is shorter than one video frame; nothing to render")
        t0 = time.perf_counter()
        while (n := eng.ready_count()) > 0:
            for k, img in self._render(eng, min(n, batch)):
                yield SpokenFrame(k, img, k / self.fps, time.perf_counter() - t0)
        self.last_stats = {
            "frames": eng.emitted, "speech_frames": eng.speech_frames, "seconds": time.perf_counter() - t_start,
            "latency_p50_s": float(np.median(lat)) if lat else None,
            "latency_p95_s": float(np.percentile(lat, 95)) if lat else None,
            "delay_s": self.delay_s(streaming),
        }
        if eng.speech_frames == 0 and self.cfg.vad != "off":
            print("avatar: warning: no speech detected in the audio; the mouth stays closed", file=sys.stderr)

    def frames(self, wav16k: np.ndarray, record: bool = False) -> Iterator[SpokenFrame]:
        """Offline: all frames for a 16 kHz mono signal (long feature segments, batched rendering)."""
        block = int(SR * 10)
        chunks = (wav16k[i:i + block] for i in range(0, max(len(wav16k), 1), block))
        return self._run(chunks, streaming=False, batch=self.cfg.batch, record=record)

    def stream(self, chunks: Iterable[np.ndarray], record: bool = False) -> Iterator[SpokenFrame]:
        """Streaming: float32 mono 16 kHz chunks of any size in, frames out as soon as they are final.

        Uses short causal feature segments (`stream_segment_frames`, `stream_past_s`,
        `stream_future_frames`); each frame's `latency_s` is the time from its completing chunk's
        arrival to the frame being ready; `delay_s()` is the audio look-ahead on top of that."""
        return self._run(chunks, streaming=True, batch=max(1, self.cfg.stream_segment_frames), record=record)

    def stream_offline_equivalent(self, wav16k: np.ndarray) -> Iterator[SpokenFrame]:
        """The whole signal through the *streaming* segment settings in one push: the reference the
        stream must equal frame for frame."""
        return self._run([wav16k], streaming=True, batch=self.cfg.batch)

    def render_file(self, audio: str | os.PathLike, out: str | os.PathLike, *, max_duration: float | None = 600.0,
                    export_motion: str | os.PathLike | None = None, progress: bool = True) -> dict:
        """Render `audio` (any format) to `out` (.mp4, or a folder of RGBA PNGs when transparent).

        Audio is decoded in blocks twice in lock-step: 16 kHz mono for the features, and at its own
        rate (<= 48 kHz) for the muxed AAC track; frames go to the encoder as they are rendered.
        Returns a summary dict (frames, duration, seconds, fps)."""
        from avatar.core.video_writer import PngSequenceWriter, VideoWriter

        info = probe_audio(audio)
        if max_duration is not None and info.duration > max_duration:
            raise AvatarError(f"{audio}: audio is {info.duration:.1f} s, longer than the limit of {max_duration:.0f} s; "
                              f"pass --allow-long to render it anyway")
        out = Path(out)
        expect = int(round(info.duration * self.fps))
        mux_rate = int(min(max(info.sample_rate, 8000), 48000))
        av = self.avatar
        if self.transparent and out.suffix.lower() == ".webm":  # VP9 with an alpha plane + Opus
            mux_rate = 48000
            writer = VideoWriter(out, av.width, av.height, self.fps, audio_rate=mux_rate, alpha=True)
        elif self.transparent:
            if out.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v"):
                raise AvatarError(f"{out}: H.264 has no alpha; for a transparent background give -o a folder (RGBA PNG "
                                  f"sequence) or a .webm file (VP9 with alpha)")
            writer = PngSequenceWriter(out, av.width, av.height, self.fps, audio_rate=mux_rate)
        else:
            if out.suffix.lower() == ".webm":
                mux_rate = 48000
            writer = VideoWriter(out, av.width, av.height, self.fps, audio_rate=mux_rate)
        mux_iter = iter_audio(audio, sr=mux_rate, block_s=5.0)
        mux_buf = [np.zeros(0, np.float32)]
        mux_written = [0]

        def feed_mux(upto_s: float | None) -> None:
            want = None if upto_s is None else int(round(upto_s * mux_rate))
            while want is None or mux_written[0] < want:
                if mux_buf[0].shape[0] == 0:
                    nxt = next(mux_iter, None)
                    if nxt is None:
                        return
                    mux_buf[0] = nxt
                take = mux_buf[0].shape[0] if want is None else min(mux_buf[0].shape[0], want - mux_written[0])
                writer.write_audio(mux_buf[0][:take])
                mux_buf[0] = mux_buf[0][take:]
                mux_written[0] += take

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=expect, unit="frame", desc="speak", file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            with writer:
                frames = self._run(iter_audio(audio, sr=SR, block_s=10.0), streaming=False, batch=self.cfg.batch,
                                   record=export_motion is not None)
                for fr in frames:
                    writer.write(fr.rgb)
                    feed_mux((fr.index + 1) / self.fps)
                    if bar is not None:
                        bar.update(1)
                feed_mux(None)
                writer.num_frames = self.last_stats["frames"]
        finally:
            if bar is not None:
                bar.close()
        summary = {"frames": self.last_stats["frames"], "expected_frames": expect, "duration_s": info.duration,
                   "fps": self.fps, "seconds": time.perf_counter() - t0, "output": str(out),
                   "speech_frames": self.last_stats["speech_frames"]}
        summary["render_fps"] = summary["frames"] / max(summary["seconds"], 1e-9)
        if export_motion is not None:
            self.export_motion(export_motion, source=str(audio))
        return summary

    def export_motion(self, path: str | os.PathLike, source: str = "") -> Path:
        """Write the last render's per-frame motion (.npz): head [N,4,4] poses (before offsets/camera),
        camera [N,4,4] moves (training camera -> output camera), viewmats [N,4,4] the head -> output camera
        transform the head was rendered with (camera @ offset head), blink [N], speech [N] (1 = speech), feats [N,D]
        (the gated feature rows), fps, and the config as JSON. Re-use with --pose FILE, --blink FILE,
        --camera-path FILE."""
        import json

        from avatar.core.io import save_npz_atomic

        if not self._record:
            raise AvatarError("no motion recorded; render with export_motion first")
        r = self._record
        arrays = {k: np.asarray(np.stack(v) if v and isinstance(v[0], np.ndarray) else np.asarray(v), np.float32) for k, v in r.items()}
        cfg = json.dumps(dataclasses.asdict(self.cfg) | {"audio": source})
        save_npz_atomic(path, fps=np.float32(self.fps), config=np.array(cfg), **arrays)
        return Path(path)
