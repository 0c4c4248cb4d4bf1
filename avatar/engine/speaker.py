"""`Speaker`: audio -> talking frames through the one engine, offline (`frames`, `render_file`), streaming
(`stream`) or as windows for an interactive caller (`windows` + `render`, the viewer).

    from avatar.engine import Avatar, Speaker, SpeakConfig
    sp = Speaker(Avatar.load("runs/NAME"), SpeakConfig(pose="audio", orbit=30))
    sp.render_file("speech.mp3", "out.mp4")                 # H.264 + AAC, frame exact
    for fr in sp.stream(chunks_16k):                        # float32 mono 16 kHz chunks, any size
        show(fr.rgb)                                        # fr.latency_s: chunk arrival -> frame ready

Every path runs a `FrameEngine` (avatar/engine/engine.py: features per segment, silence gate, windows,
motion) and renders its `FrameBatch`es with `Speaker.render` (avatar/engine/runtime.py `Avatar.render`,
composited by avatar/engine/background.py `to_uint8`). The streaming output equals the offline output
frame for frame for the same segment settings; the algorithmic delay is reported by `Speaker.delay_s`.
Every frame is drawn at `Speaker.width` x `Speaker.height`: the source clip's size unless `SpeakConfig.size` /
`scale` / `fit` say otherwise (avatar/core/camera.py `output_frame`, issue 12).
--export-motion records head (H_k before offsets), camera (C_k) and viewmats (C_k H_k with offsets);
replaying head and camera reproduces the video (avatar/engine/track.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE, iter_audio, probe_audio
from avatar.engine.background import parse_background, to_uint8
from avatar.engine.config import SpeakConfig
from avatar.engine.engine import FrameBatch, FrameEngine, Segmenting
from avatar.engine.features import (
    FeatureFn,
    TrainingStats,
    feature_fn_for,
    training_stats,
)
from avatar.engine.gate import SpeechGate
from avatar.engine.track import Motion, check_lip_scale
from avatar.errors import AvatarError

SR = SAMPLE_RATE


@dataclasses.dataclass
class SpokenFrame:
    """One output frame. rgb [H, W, 3] uint8 (rgba [H, W, 4] when the background is transparent)."""

    index: int
    rgb: np.ndarray
    time_s: float
    latency_s: float = 0.0
    """Wall time from the arrival of the audio chunk that completed this frame's inputs to the frame being ready."""
    audio_in_s: float | None = None
    """Seconds of audio the engine had received when this frame's inputs became final (None: only once the
    audio had ended). Minus `time_s`, the look-ahead the frame waited for: at most `Speaker.delay_s()` plus the
    chunk that completed it."""


def default_render_threads(device) -> int:
    """Frames rendered at once by default: on the CPU one per core torch uses, one on a GPU."""
    import torch

    return 1 if str(device).startswith("cuda") else max(1, torch.get_num_threads())


def torch_threads_each(n: int) -> int:
    """torch threads of each of n render threads: the cores torch uses, shared out (at least one)."""
    import torch

    return max(1, torch.get_num_threads() // max(1, n))


_POOLS: dict[tuple[int, int], object] = {}
_POOLS_LOCK = threading.Lock()


def render_pool(n: int):
    """A process-wide pool of n render threads (None for n <= 1), each running torch with its share of the cores
    torch uses (one of two on 2 cores). Whole frames in parallel beat one frame split over the cores: a frame's
    hundreds of small torch ops each wait for the slower core, and anything else running on the machine slows
    one of them. Measured on 2 cores, the bench fixture (bench/_common.py): at 128 px 30.8 -> 45.7 frames/s
    (21.4 -> 39.3 with a Python thread busy 20 % of the time beside it), at 512 px 12.4 -> 15.6."""
    if n <= 1:
        return None
    import torch

    each = torch_threads_each(n)
    with _POOLS_LOCK:
        pool = _POOLS.get((n, each))
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor

            pool = _POOLS[(n, each)] = ThreadPoolExecutor(n, thread_name_prefix="avatar-render",
                                                          initializer=torch.set_num_threads, initargs=(each,))
        return pool


class Speaker:
    """Render an avatar speaking: `render_file` (mp4 / PNG sequence), `frames` (offline iterator),
    `stream` (chunks in, frames out), `windows` + `render` (the viewer's per-frame access)."""

    def __init__(self, avatar, cfg: SpeakConfig | None = None, feature_fn: FeatureFn | None = None,
                 stats: TrainingStats | None = None):
        self.avatar = avatar
        self.cfg = cfg or SpeakConfig()
        c = self.cfg
        self.fps = float(c.fps or avatar.fps)
        if not (0 < self.fps <= 120):
            raise AvatarError(f"--fps must be in (0, 120], got {self.fps}")
        c.validate()
        self.feature_fn = feature_fn or feature_fn_for(avatar.feature_meta, c.feature_model_dir)
        self.stats = stats or training_stats(avatar, self.feature_fn)
        # the output size contract (issue 12): the source clip's size unless --size / --scale say otherwise
        self.frame = (avatar.output_frame(c.size, c.scale, c.fit) if hasattr(avatar, "output_frame") else None)
        """`avatar.core.camera.OutputFrame` of every frame this speaker renders (None: a stand-in avatar
        without one renders at its own width x height)."""
        rw, rh = (self.frame.render_w, self.frame.render_h) if self.frame is not None else (avatar.width, avatar.height)
        self.bg, self.transparent = parse_background(c.background, rw, rh)
        if self.bg is not None and not isinstance(self.bg, str):
            import torch

            self.bg = torch.as_tensor(self.bg, device=avatar.device)
        self.motion = Motion(c, avatar.train_viewmats.detach().cpu().numpy(), avatar.train_blink.detach().cpu().numpy(),
                             float(avatar.fps), self.fps, self.stats.level_db)
        check_lip_scale(c.lip_scale)
        self.engine: FrameEngine | None = None
        """The engine of the current / last render (tests check its buffers stay bounded)."""
        self.last_record: dict | None = None
        """Per-frame motion of the last render made with record=True (`export_motion`)."""
        self.last_stats: dict = {}

    @property
    def width(self) -> int:
        """Output frame width in pixels (the source clip's by default)."""
        return int(self.frame.width) if self.frame is not None else int(self.avatar.width)

    @property
    def height(self) -> int:
        """Output frame height in pixels."""
        return int(self.frame.height) if self.frame is not None else int(self.avatar.height)

    # -- engine ----------------------------------------------------------------------------------
    def _segmenting(self, streaming: bool) -> Segmenting:
        c = self.cfg
        if streaming:
            return Segmenting(max(1, int(c.stream_segment_frames)), int(math.ceil(c.stream_past_s * self.fps)),
                              max(1, int(c.stream_future_frames)))
        ctx = int(math.ceil(c.context_s * self.fps))
        return Segmenting(max(1, int(round(c.segment_s * self.fps))), ctx, max(1, ctx))

    def new_engine(self, streaming: bool, record: bool = False, motion: bool = True) -> FrameEngine:
        """A fresh `FrameEngine` for one render with this speaker's features, gate, silence and motion."""
        c = self.cfg
        W = self.avatar.feature_window
        future = int(getattr(self.avatar, "feature_future", W - 1 - W // 2))
        gate = None if c.vad == "off" else SpeechGate(self.fps, kind=c.vad, threshold=c.vad_threshold, energy_db=c.energy_db)
        return FrameEngine(self.fps, self.feature_fn, self._segmenting(streaming), window_past=W - 1 - future,
                           window_future=future, lookahead=self.window_look(), gate=gate,
                           silent_row=self.stats.silent_row, silent_window=self.stats.silent_window,
                           motion=self.motion.track() if motion else None, record=record)

    def delay_s(self, streaming: bool = True) -> float:
        """Algorithmic delay (worst case, excluding compute): how much audio must have arrived beyond a
        frame's time before that frame can be rendered. Frame k needs the feature rows up to k + L (L =
        window look-ahead), i.e. its segment's end (<= G frames on) plus F frames of future context, and
        the silence gate's decisions up to k + L + 3 (2 frames padding + the 1-frame ramp)."""
        s = self._segmenting(streaming)
        gate = 3.5 if self.cfg.vad != "off" else 0.0
        return (self.window_look() + max(s.frames + s.future, gate)) / self.fps

    def window_look(self) -> int:
        """Future feature rows a frame waits for: the model's look-ahead (`Avatar.feature_future`, trained),
        optionally clamped lower by `SpeakConfig.window_lookahead`."""
        W = self.avatar.feature_window
        future = int(getattr(self.avatar, "feature_future", W - 1 - W // 2))
        if self.cfg.window_lookahead is None:
            return future
        return max(0, min(future, int(self.cfg.window_lookahead)))

    # -- rendering ------------------------------------------------------------------------------
    @property
    def render_threads(self) -> int:
        """Frames rendered at once (`SpeakConfig.render_threads`; 0 = `default_render_threads`)."""
        return int(self.cfg.render_threads) or default_render_threads(self.avatar.device)

    def render(self, windows: np.ndarray, viewmats: np.ndarray, blinks: np.ndarray, cameras: np.ndarray | None = None,
               **kw) -> np.ndarray:
        """uint8 frames [B, H, W, 3|4] for windows [B, W, D], head viewmats [B, 4, 4] (head -> training camera),
        blinks [B] and camera moves [B, 4, 4] or one [4, 4] (None: the training camera). Keywords K / width /
        height / background / lip_scale / torso default to the avatar's camera and this speaker's config (the
        viewer overrides them). Frames are rendered one by one, with `render_threads` > 1 one per thread at once
        (`render_pool`): a frame's bytes never depend on the frames rendered with it nor on the thread count (a
        batched pass of a joint, not layered, model gave other GEMM kernels: results 1e-7 apart)."""
        n = len(windows)
        if n <= 1:
            return self._render(windows, viewmats, blinks, cameras, **kw)
        per_frame = cameras is not None and np.ndim(cameras) == 3

        def one(i: int) -> np.ndarray:
            return self._render(windows[i:i + 1], viewmats[i:i + 1], blinks[i:i + 1],
                                cameras[i:i + 1] if per_frame else cameras, **kw)

        pool = render_pool(self.render_threads)
        return np.concatenate(list(pool.map(one, range(n))) if pool is not None else [one(i) for i in range(n)])

    def _render(self, windows: np.ndarray, viewmats: np.ndarray, blinks: np.ndarray, cameras: np.ndarray | None = None,
                *, K=None, width: int | None = None, height: int | None = None, background="config",
                lip_scale: float | None = None, torso: bool | None = None) -> np.ndarray:
        import torch

        av = self.avatar
        dev = av.device
        bg = self.bg if isinstance(background, str) and background == "config" else background
        own = K is None and width is None and height is None and self.frame is not None
        extra = {"frame": self.frame} if own else {}
        out = av.render(torch.as_tensor(windows, device=dev), torch.as_tensor(viewmats, device=dev),
                        torch.as_tensor(blinks, device=dev), K=None if K is None else torch.as_tensor(K, device=dev),
                        width=width, height=height, background=bg,
                        lip_scale=self.cfg.lip_scale if lip_scale is None else float(lip_scale),
                        torso=self.cfg.torso if torso is None else bool(torso),
                        camera=None if cameras is None else torch.as_tensor(cameras, device=dev), **extra)
        return to_uint8(out, self.transparent and bg is None)

    def _render_batch(self, b: FrameBatch) -> list[tuple[int, np.ndarray]]:
        cams = b.cameras if self.motion.moving_camera else None
        return list(zip(b.index, self.render(b.windows, b.viewmats, b.blinks, cams)))

    def run(self, chunks: Iterable[np.ndarray], streaming: bool, batch: int, record: bool = False) -> Iterator[SpokenFrame]:
        """Frames for 16 kHz chunks: the loop behind `frames`, `stream` and `render_file`.

        Streaming runs the engine (audio in, features, gate, motion) in a second thread that hands finished
        batches to this one through a short queue, so the next segment's features are computed while this
        thread renders; with the default extractor its phone decoding runs in a helper process
        (`phones_in_helper_process`), which holds no GIL. The frames are the same as computed one after the
        other: the engine's results do not depend on when they are taken."""
        eng = self.engine = self.new_engine(streaming, record)
        lat: list[float] = []
        t_start = time.perf_counter()
        batches = self._pipelined(eng, chunks, batch) if streaming else self._sequential(eng, chunks, batch)
        try:
            for b, t0, audio_in in batches:
                for k, img in self._render_batch(b):
                    dt = time.perf_counter() - t0
                    if audio_in is not None:
                        lat.append(dt)
                    yield SpokenFrame(k, img, k / self.fps, dt, audio_in)
        finally:
            batches.close()  # a consumer that stops early stops the engine thread now
        self.last_record = eng.record
        self.last_stats = {
            "frames": eng.emitted, "speech_frames": eng.speech_frames, "seconds": time.perf_counter() - t_start,
            "latency_p50_s": float(np.median(lat)) if lat else None,
            "latency_p95_s": float(np.percentile(lat, 95)) if lat else None,
            "delay_s": self.delay_s(streaming),
        }
        if eng.speech_frames == 0 and self.cfg.vad != "off":
            print("avatar: warning: no speech detected in the audio; the mouth stays closed", file=sys.stderr)

    @staticmethod
    def _sequential(eng: FrameEngine, chunks: Iterable[np.ndarray], batch: int, streaming: bool = False
                     ) -> Iterator[tuple[FrameBatch, float, float | None]]:
        """(batch, time its completing chunk was pushed, seconds of audio received then: None after the end of
        the audio) as the engine finishes them; offline, only full batches until the audio ends."""
        for chunk in chunks:
            t0 = time.perf_counter()
            eng.push(chunk)
            while True:
                n = eng.ready_count()
                if n <= 0 or (not streaming and n < batch):
                    break
                yield eng.take(min(n, batch)), t0, eng.samples_pushed / SR
        eng.end()
        if eng.num_frames == 0:
            raise AvatarError("the audio is shorter than one video frame; nothing to render")
        t0 = time.perf_counter()
        while (n := eng.ready_count()) > 0:
            yield eng.take(min(n, batch)), t0, None

    def _pipelined(self, eng: FrameEngine, chunks: Iterable[np.ndarray], batch: int
                   ) -> Iterator[tuple[FrameBatch, float, float | None]]:
        """`_sequential(streaming=True)` run in a producer thread, at most 2 batches ahead of the renderer
        (one queued, one being made).
        Its errors (bad audio, a failing reader) are raised here; closing this generator stops the thread."""
        import queue

        from avatar.features.phone_process import phones_in_helper_process

        q: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                with phones_in_helper_process(getattr(self.avatar, "feature_meta", None) or {}):
                    for item in self._sequential(eng, chunks, batch, streaming=True):
                        if not put(("batch", item)):
                            return
                put(("end", None))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
                put(("error", e))

        th = threading.Thread(target=produce, name="avatar-engine", daemon=True)
        th.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
            th.join(timeout=2.0)  # (a thread blocked reading its audio, e.g. stdin, is a daemon: left behind)

    def frames(self, wav16k: np.ndarray, record: bool = False) -> Iterator[SpokenFrame]:
        """Offline: all frames for a 16 kHz mono signal (long feature segments, batched rendering)."""
        block = int(SR * 10)
        chunks = (wav16k[i:i + block] for i in range(0, max(len(wav16k), 1), block))
        return self.run(chunks, streaming=False, batch=self.cfg.batch, record=record)

    def stream(self, chunks: Iterable[np.ndarray], record: bool = False) -> Iterator[SpokenFrame]:
        """Streaming: float32 mono 16 kHz chunks of any size in, frames out as soon as they are final.

        Uses short causal feature segments (`stream_segment_frames`, `stream_past_s`,
        `stream_future_frames`); each frame's `latency_s` is the time from its completing chunk's
        arrival to the frame being ready; `delay_s()` is the audio look-ahead on top of that."""
        return self.run(chunks, streaming=True, batch=max(1, self.cfg.stream_segment_frames), record=record)

    def stream_offline_equivalent(self, wav16k: np.ndarray) -> Iterator[SpokenFrame]:
        """The whole signal through the *streaming* segment settings in one push: the reference the
        stream must equal frame for frame."""
        return self.run([wav16k], streaming=True, batch=self.cfg.batch)

    def windows(self, wav16k: np.ndarray) -> np.ndarray:
        """[N, W, D] the feature windows the engine renders for a whole 16 kHz clip (offline segments,
        silence gated and closed exactly as `frames` does), for callers that pick frames themselves."""
        eng = self.engine = self.new_engine(streaming=False, motion=False)
        block = int(SR * 10)
        for i in range(0, max(len(wav16k), 1), block):
            eng.push(wav16k[i:i + block])
        eng.end()
        if eng.num_frames == 0:
            raise AvatarError("the audio is shorter than one video frame; nothing to render")
        return eng.take(eng.ready_count()).windows

    def silence_window(self) -> np.ndarray:
        """[W, D] the window the engine renders for silence (what `windows` gives for digital silence)."""
        return self.windows(np.zeros(int(round(SR / self.fps)), np.float32))[0]

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
        if self.transparent and out.suffix.lower() == ".webm":  # VP9 with an alpha plane + Opus
            mux_rate = 48000
            writer = VideoWriter(out, self.width, self.height, self.fps, audio_rate=mux_rate, alpha=True)
        elif self.transparent:
            if out.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v"):
                raise AvatarError(f"{out}: H.264 has no alpha; for a transparent background give -o a folder (RGBA PNG "
                                  f"sequence) or a .webm file (VP9 with alpha)")
            writer = PngSequenceWriter(out, self.width, self.height, self.fps, audio_rate=mux_rate)
        else:
            if out.suffix.lower() == ".webm":
                mux_rate = 48000
            writer = VideoWriter(out, self.width, self.height, self.fps, audio_rate=mux_rate)
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
        t0 = time.perf_counter()
        try:
            with writer:  # an error removes the partial output (avatar/core/video_writer.py)
                frames = self.run(iter_audio(audio, sr=SR, block_s=10.0), streaming=False, batch=self.cfg.batch,
                                  record=export_motion is not None)
                for fr in frames:
                    writer.write(fr.rgb)
                    feed_mux((fr.index + 1) / self.fps)
                    if progress and bar is None:  # created at the first frame: an input error prints one line
                        from tqdm import tqdm

                        bar = tqdm(total=expect, unit="frame", desc="speak", file=sys.stderr, dynamic_ncols=True)
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

        if not self.last_record:
            raise AvatarError("no motion recorded; render with export_motion first")
        r = self.last_record
        arrays = {k: np.asarray(np.stack(v) if v and isinstance(v[0], np.ndarray) else np.asarray(v), np.float32) for k, v in r.items()}
        cfg = json.dumps(dataclasses.asdict(self.cfg) | {"audio": source})
        save_npz_atomic(path, fps=np.float32(self.fps), config=np.array(cfg), **arrays)
        return Path(path)
