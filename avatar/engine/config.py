"""`SpeakConfig`: every control of the engine, one docstring per field.

The docstring under each field is its `avatar speak --help` line: avatar/commands/speak.py generates the
options from these fields (avatar/core/config.py `add_flat_dataclass_args`), so a new field gets its flag
and its help text by being written here. Light on purpose (no numpy, no torch): the CLI imports it to
build its parser.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

LoopMode = Literal["crossfade", "pingpong"]
VadMode = Literal["silero", "energy", "off"]
VadKind = Literal["silero", "energy"]
FitMode = Literal["pad", "crop", "stretch"]


@dataclasses.dataclass
class SpeakConfig:
    """Controls of the engine for `avatar speak` (offline and --stream) and the viewer."""

    pose: str = "replay"
    """head pose: replay (the training clip's poses, looped without a jump), static (the mean pose), audio
    (head motion generated from the speech rhythm, learned from the training clip), or a motion .npz written
    by --export-motion (its head poses)"""
    loop: LoopMode = "crossfade"
    """how --pose replay loops: crossfade (blend the clip's end into its start) or pingpong (play back and forth)"""
    yaw: float = 0.0
    """head yaw offset in degrees (+ turns the face towards image right)"""
    pitch: float = 0.0
    """head pitch offset in degrees (+ nods the chin down)"""
    roll: float = 0.0
    """head roll offset in degrees (+ tilts the head clockwise in the image)"""
    orbit: float = 0.0
    """free-view camera swinging around the head, degrees peak to peak (0: the training camera). Head and
    torso turn together; the background plate is re-projected as a distant wall (edge pixels repeat where it
    runs out: use a colour --background for large moves)"""
    orbit_period: float = 6.0
    """seconds per left-right-left orbit swing"""
    camera_path: str | None = None
    """camera path: JSON list of 4x4 world->camera matrices (identity = training camera) or of {"yaw", "pitch",
    "roll"} degrees around the head, one per frame (the last is held); .npy [N,4,4] or an --export-motion .npz
    (its camera)"""
    blink: str = "auto"
    """blinks: auto (rate/duration learned from the training clip), off (eyes open), or a file of per-frame
    values in [0,1] (.npy/.txt/.json, or an --export-motion .npz)"""
    lip_scale: float = 1.0
    """scale of the audio-driven mouth motion: >1 exaggerates, <1 damps articulation"""
    vad: VadMode = "silero"
    """voice activity used to close the mouth in silence: silero (silero-vad), energy (level threshold) or off"""
    vad_threshold: float = 0.5
    """silero speech probability threshold for a frame to count as speech"""
    energy_db: float = -45.0
    """--vad energy: RMS level in dBFS above which a frame counts as speech"""
    background: str = "plate"
    """plate (the training background), a colour (black, white, green, #RRGGBB, R,G,B), an image file, or
    transparent (RGBA PNG sequence folder or alpha .webm)"""
    size: str | None = None
    """output size WIDTHxHEIGHT in pixels (default: the source clip's size); one side only (1280x, x720) keeps the
    aspect; both sides with another aspect than the source's need --fit"""
    scale: float | None = None
    """output size as a factor of the source clip's size (0.5: half), aspect kept; instead of --size"""
    fit: FitMode | None = None
    """how a --size of another aspect than the source is filled: pad (letterbox bars), crop (fill the frame, cut
    the overflow) or stretch (scale width and height apart)"""
    torso: bool = True
    """render the torso Gaussians (--no-torso: the head only)"""
    seed: int = 0
    """seed of the generated motion (blinks, --pose audio)"""
    fps: float | None = None
    """output frame rate (default: the training fps; other rates re-time features and poses)"""
    batch: int = 8
    """frames taken from the engine at a time offline (shared out among the render threads)"""
    render_threads: int = 0
    """frames rendered at once, each by its own thread (0: on the CPU one per core torch uses, each with one torch
    thread; on a GPU one); the output is the same whatever the count"""
    segment_s: float = 30.0
    """offline feature segment length in seconds (bounded memory for hour-long audio)"""
    context_s: float = 1.5
    """offline audio context on each side of a feature segment, seconds"""
    stream_segment_frames: int = 5
    """--stream: frames per causal feature segment (smaller = lower delay, more extractor calls)"""
    stream_past_s: float = 1.0
    """--stream: past audio context of each feature segment, seconds"""
    stream_future_frames: int = 2
    """--stream: future audio context of each feature segment, frames (part of the delay)"""
    window_lookahead: int | None = None
    """future feature rows the model's window may use (default: the model's own look-ahead; fewer = lower
    delay, the missing rows are edge-padded as at a clip end, which the model never saw in training: prefer a
    model trained with --model.audio_lookahead)"""
    feature_model_dir: str | None = None
    """local wav2vec2/HuBERT model folder when the avatar was trained on such features"""

    def validate(self) -> None:
        """Range checks every caller gets (speak, stream, viewer, serve, batch): one-line AvatarError."""
        from avatar.errors import AvatarError

        if self.render_threads < 0:
            raise AvatarError(f"--render-threads {self.render_threads}: must be 0 (automatic) or more")
        if not 0.0 <= self.orbit <= 360.0:
            raise AvatarError(f"--orbit {self.orbit}: degrees must be in [0, 360]")
        if not self.orbit_period > 0:
            raise AvatarError(f"--orbit-period {self.orbit_period}: must be positive")
        if self.batch < 1 or self.stream_segment_frames < 1:
            raise AvatarError(f"--batch and --stream-segment-frames must be >= 1, got {self.batch} and "
                              f"{self.stream_segment_frames}")
