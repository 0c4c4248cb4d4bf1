"""`avatar preprocess` end to end: the driver (cache, resume, --force), bad input through the CLI, and
real clips from ../shared/data (may_5s.mp4 end to end, macron_50s_30fps.mp4 resampled 30 -> 25 fps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from avatar.cli import main as cli_main
from avatar.core.dataset_format import MASK_LABELS, load_dataset, split_ranges
from avatar.errors import AvatarError
from avatar.preprocess.config import PreprocessConfig
from avatar.preprocess.pipeline import MARKER_DIR, STAGES, run_preprocess
from conftest import pose_fit_errors, shared_file, write_synthetic_video


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli_main(["preprocess", *map(str, argv), "-q"])
    err = capsys.readouterr().err
    return rc, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("avatar: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- driver and bad input on synthetic clips -----------------------------------------------------


def test_split_ranges():
    assert split_ranges(1100, 1 / 11) == {"train": [0, 1000], "val": [1000, 1100]}
    s = split_ranges(125, 1 / 11)
    assert s["train"] == [0, 113] and s["val"] == [113, 125]
    assert split_ranges(2, 1 / 11) == {"train": [0, 1], "val": [1, 2]}  # both parts keep a frame


def test_cli_no_such_file(tmp_path, capsys):
    rc, err = _cli(capsys, tmp_path / "missing.mp4", "-o", tmp_path / "out")
    line = _one_line_error(err)
    assert rc != 0 and "missing.mp4" in line and "no such file" in line
    assert not (tmp_path / "out").exists()


def test_cli_not_a_video(tmp_path, capsys):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00garbage" * 1000)
    rc, err = _cli(capsys, p, "-o", tmp_path / "out")
    line = _one_line_error(err)
    assert rc != 0 and "clip.mp4" in line and "not a readable video" in line


def test_cli_truncated(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    write_synthetic_video(video, n_frames=150, fps=25.0, noise=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:-len(video.read_bytes()) // 3])
    rc, err = _cli(capsys, cut, "-o", tmp_path / "out")
    line = _one_line_error(err)
    assert rc != 0 and "cut.mp4" in line
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_cli_no_audio_track_then_no_face(tmp_path, capsys):
    """No audio: error suggesting --no-audio; with --no-audio the noise clip reaches the face check and fails
    there, with the finished decode stage kept (cached) and nothing marked complete."""
    video = tmp_path / "noise.mp4"
    write_synthetic_video(video, n_frames=100, fps=25.0, width=128, height=96, audio=False, noise=True)
    out = tmp_path / "out"
    rc, err = _cli(capsys, video, "-o", out)
    assert rc != 0 and "--no-audio" in _one_line_error(err)
    rc, err = _cli(capsys, video, "-o", out, "--no-audio")
    line = _one_line_error(err)
    assert rc != 0 and "noise.mp4" in line and "no face found" in line
    assert not (out / "dataset.json").exists()
    assert (out / MARKER_DIR / "decode.json").exists() and not (out / MARKER_DIR / "landmarks.json").exists()
    # re-run: decode is reused (its frames are not rewritten), the face check fails again
    mtime = (out / "frames" / "000000.jpg").stat().st_mtime_ns
    with pytest.raises(AvatarError, match="no face found"):
        run_preprocess(video, out, PreprocessConfig(no_audio=True), progress=False)
    assert (out / "frames" / "000000.jpg").stat().st_mtime_ns == mtime
    # --force decode rewrites them
    with pytest.raises(AvatarError, match="no face found"):
        run_preprocess(video, out, PreprocessConfig(no_audio=True), force=["decode"], progress=False)
    assert (out / "frames" / "000000.jpg").stat().st_mtime_ns != mtime


def test_cli_too_short(tmp_path, capsys):
    video = tmp_path / "short.mp4"
    write_synthetic_video(video, n_frames=40, fps=25.0)
    rc, err = _cli(capsys, video, "-o", tmp_path / "out")
    line = _one_line_error(err)
    assert rc != 0 and "too short" in line and "short.mp4" in line


def test_unknown_force_stage(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    write_synthetic_video(video, n_frames=10, fps=25.0)
    with pytest.raises(AvatarError, match="unknown stage"):
        run_preprocess(video, tmp_path / "out", force=["nope"], progress=False)
    with pytest.raises(SystemExit):  # argparse rejects it in the CLI
        cli_main(["preprocess", str(video), "-o", str(tmp_path / "out"), "--force", "nope"])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["preprocess", "--help"])
    out = capsys.readouterr().out
    for opt in ("-o DATA_DIR", "--force STAGE", "--preview", "--no-audio", "--features KIND", "--model-dir",
                "--import-features NPY", "--resolution", "--fps", "--max_missing_share", "--pose_smooth_rot"):
        assert opt in out, opt


# ---- real data ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def macron_dataset(tmp_path_factory, shared_data):
    """macron_50s_30fps.mp4 preprocessed once per session (30 -> 25 fps, 80 ms start offset), at 256² to keep
    the suite fast (the pose thresholds scale with the frame size; may_5s covers 512²)."""
    video = shared_file("video/macron_50s_30fps.mp4")
    out = tmp_path_factory.mktemp("macron") / "data"
    info = run_preprocess(video, out, PreprocessConfig(resolution=256), progress=False)
    return video, info


@pytest.mark.slow
def test_may_end_to_end(may_dataset):
    video, info = may_dataset
    raw = info.raw
    n = info.num_frames
    assert n == 125 and info.fps == 25 and (info.width, info.height) == (512, 512)
    for key in ("version", "source", "fps", "num_frames", "width", "height", "camera", "stages", "files", "features",
                "default_feature", "split", "quality", "has_audio"):
        assert key in raw, key
    assert raw["source"]["sha256"] and raw["split"] == {"train": [0, 113], "val": [113, 125]}
    assert len(list((info.root / "frames").glob("*.jpg"))) == n
    assert len(list((info.root / "masks").glob("*.png"))) == n
    # audio: 16 kHz mono, n / 25 s within one frame
    wav, sr = sf.read(str(info.path("audio.wav")))
    assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - n / 25) <= 1 / 25
    # landmarks on every frame
    assert info.landmarks().shape == (n, 478, 2) and raw["quality"]["faces_found"] == n
    # pose: the rigid head model reprojects onto the tracked points within a few pixels at 512² (measured
    # 1.5 px mean over all 478 points) and the head turns smoothly (measured 0.7 deg per frame; a speaker's
    # head turning 2 deg every 40 ms = 50 deg/s all the time would be a tracking failure)
    reproj, rot_step = pose_fit_errors(info)
    assert reproj < 2.5 and rot_step < 2.0
    q = raw["quality"]
    cam = info.camera_pose()
    assert cam.R.shape == (n, 3, 3) and (cam.t[:, 2] > 0).all() and cam.focal == raw["camera"]["focal"]
    # features: one row per frame
    feats = info.feature()
    assert feats.shape[0] == n and info.default_feature == "phonetic_spectral"
    meta = json.loads(info.path("features", "phonetic_spectral.json").read_text())
    assert meta["dim"] == feats.shape[1] and meta["fps"] == 25
    # blink in [0, 1], with a plausible blink rate (Bentivoglio 1997: 4.5-26 /min; 5 s is a short sample)
    b = info.blink()
    assert b.shape == (n,) and b.min() >= 0 and b.max() <= 1
    assert (b > 0.5).any() and np.median(b) < 0.3
    assert 1 <= q["blink"]["blinks"] <= 5
    # preview
    assert info.path("preview", "contact_sheet.jpg").stat().st_size > 10_000
    assert info.path("preview", "overlay.mp4").stat().st_size > 10_000
    assert (info.root / "preprocess.yaml").is_file() and (info.root / "background.png").is_file()


@pytest.mark.slow
def test_may_masks(may_dataset):
    import cv2

    from avatar.core.dataset_format import FrameCache

    _, info = may_dataset
    lm = info.landmarks()
    cache = FrameCache(info, capacity=4)
    for k in (0, 40, 80, 124):
        rgb, labels = cache.get(k)
        assert labels.shape == rgb.shape[:2] and labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= set(MASK_LABELS.values())
        for name in ("face", "hair", "torso", "background"):
            assert (labels == MASK_LABELS[name]).sum() > 500, (k, name)
        # landmark-defined regions sit where the landmarks are: nose tip on face, eye centre on eyes/face
        x, y = np.round(lm[k, 1]).astype(int)
        assert labels[y, x] == MASK_LABELS["face"]
        x, y = np.round(lm[k, 468]).astype(int)
        assert labels[y, x] in (MASK_LABELS["eyes"], MASK_LABELS["face"])
        # the mouth label sits inside the outer lip contour (61 .. 291 horizontally)
        ys, xs = np.nonzero(labels == MASK_LABELS["mouth"])
        if len(xs):
            assert lm[k, 61, 0] - 2 <= xs.min() and xs.max() <= lm[k, 291, 0] + 2
        # the person is not background, the image corners are
        assert labels[0, 0] == MASK_LABELS["background"] or labels[0, -1] == MASK_LABELS["background"]
    bg = cv2.imread(str(info.path("background.png")))
    assert bg.shape == (info.height, info.width, 3)


def test_masks_stage_same_in_process_and_in_worker_processes(may_dataset, tmp_path):
    """stage_masks gives the label maps, plate and summary of the full run in-process (threads=1) and with
    worker processes (threads=2, 3: runs handed out and merged in frame order); a worker's error arrives
    as the one-line AvatarError."""
    import shutil

    import cv2

    from avatar.preprocess.masks_stage import stage_masks
    from avatar.preprocess.stages import StageContext

    video, info = may_dataset

    def run(threads: int, out):
        shutil.copytree(info.root, out)
        summaries = {"decode": json.loads((out / MARKER_DIR / "decode.json").read_text())["summary"]}
        ctx = StageContext(video=video, out=out, cfg=PreprocessConfig(threads=threads), source_sha256="",
                           progress=False, summaries=summaries)
        return stage_masks(ctx)

    ref = json.loads((info.root / MARKER_DIR / "masks.json").read_text())["summary"]
    for threads in (1, 2, 3):
        out = tmp_path / f"t{threads}"
        assert run(threads, out) == ref, threads
        for k in range(info.num_frames):
            a = cv2.imread(str(info.root / "masks" / f"{k:06d}.png"), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(out / "masks" / f"{k:06d}.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(a, b, err_msg=f"threads={threads} frame {k}")
        np.testing.assert_array_equal(cv2.imread(str(info.root / "background.png")), cv2.imread(str(out / "background.png")))
    bad = tmp_path / "bad"
    shutil.copytree(info.root, bad)
    (bad / "frames" / "000070.jpg").write_bytes(b"not a jpeg")
    shutil.rmtree(bad / "masks")
    summaries = {"decode": json.loads((bad / MARKER_DIR / "decode.json").read_text())["summary"]}
    ctx = StageContext(video=video, out=bad, cfg=PreprocessConfig(threads=2), source_sha256="", progress=False,
                       summaries=summaries)
    with pytest.raises(AvatarError, match="000070.jpg: missing or unreadable frame"):
        stage_masks(ctx)


@pytest.mark.slow
def test_may_cache_resume_and_force(may_dataset, tmp_path):
    """Re-running reuses every stage; --force blink redoes blink and what follows, not decode/landmarks/pose."""
    import shutil

    video, info = may_dataset
    out = tmp_path / "copy"
    shutil.copytree(info.root, out)
    markers = {s: json.loads((out / MARKER_DIR / f"{s}.json").read_text()) for s in STAGES}
    frame_mtime = (out / "frames" / "000000.jpg").stat().st_mtime_ns
    info2 = run_preprocess(video, out, PreprocessConfig(preview=True), progress=False)
    for s in STAGES:  # nothing ran: markers identical
        assert json.loads((out / MARKER_DIR / f"{s}.json").read_text()) == markers[s]
    assert info2.num_frames == info.num_frames
    run_preprocess(video, out, PreprocessConfig(preview=True), force=["blink"], progress=False)
    after = {s: json.loads((out / MARKER_DIR / f"{s}.json").read_text()) for s in STAGES}
    for s in ("decode", "landmarks", "pose", "masks"):
        assert after[s] == markers[s], s
    for s in ("blink", "features", "preview"):
        assert after[s]["seconds"] != markers[s]["seconds"], s
    assert (out / "frames" / "000000.jpg").stat().st_mtime_ns == frame_mtime
    # a pose setting change re-runs pose and later stages only
    cfg = PreprocessConfig(preview=True, pose_smooth_rot=60.0)
    run_preprocess(video, out, cfg, progress=False)
    after2 = {s: json.loads((out / MARKER_DIR / f"{s}.json").read_text()) for s in STAGES}
    assert after2["landmarks"] == after["landmarks"] and after2["pose"]["key"] != after["pose"]["key"]
    assert load_dataset(out).raw["config"]["pose_smooth_rot"] == 60.0
    # importing a precomputed (ER-NeRF DeepSpeech-shaped) array re-runs only the features stage and later
    npy = tmp_path / "aud_ds.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((info.num_frames, 16, 29)).astype(np.float32))
    info3 = run_preprocess(video, out, PreprocessConfig(preview=True, pose_smooth_rot=60.0, import_features=npy),
                           progress=False)
    after3 = {s: json.loads((out / MARKER_DIR / f"{s}.json").read_text()) for s in STAGES}
    assert after3["blink"] == after2["blink"] and after3["features"]["key"] != after2["features"]["key"]
    assert info3.default_feature == "phonetic_spectral"
    assert info3.features["imported"].dim == 29 and info3.feature("imported").shape == (info.num_frames, 29)


@pytest.mark.slow
def test_no_audio_dataset(tmp_path, shared_data):
    """--no-audio on a real face: a complete silent dataset (no audio.wav, no features)."""
    out = tmp_path / "silent"
    info = run_preprocess(shared_file("video/may_5s.mp4"), out, PreprocessConfig(no_audio=True, resolution=256),
                          progress=False)
    assert not info.has_audio and info.default_feature is None and info.features == {}
    assert not (out / "audio.wav").exists() and (info.width, info.height) == (256, 256)
    assert info.raw["quality"]["faces_found"] == info.num_frames == 125
    assert pose_fit_errors(info)[0] < 1.25  # test_may_end_to_end's 2.5 px at 512², halved at 256²


@pytest.mark.slow
def test_face_lost_for_long_stretch(tmp_path, capsys, shared_data):
    """may_5s with 1.2 s of its frames replaced by noise: one-line error naming the time range."""
    import av

    with av.open(str(shared_file("video/may_5s.mp4"))) as c:
        frames = [f.to_ndarray(format="rgb24", width=256, height=256) for f in c.decode(video=0)]
    rng = np.random.default_rng(0)
    for k in range(50, 80):
        frames[k] = rng.integers(0, 256, frames[k].shape, dtype=np.uint8)
    video = tmp_path / "lost.mp4"
    write_synthetic_video(video, frames=frames, fps=25.0)
    rc, err = _cli(capsys, video, "-o", tmp_path / "out")
    line = _one_line_error(err)
    assert rc != 0 and "lost.mp4" in line and "face lost from 2.00 s to 3.20 s" in line
    assert not (tmp_path / "out" / "dataset.json").exists()


@pytest.mark.slow
def test_macron_resampled_and_in_sync(macron_dataset):
    """30 -> 25 fps from timestamps; audio length == frames / 25; the 80 ms video start offset does not
    become a lip-sync error (mouth opening vs 1-3 kHz envelope peaks at lag 0 ± 1 frame)."""
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening

    video, info = macron_dataset
    raw = info.raw
    assert raw["source"]["fps"] == pytest.approx(30.0) and info.fps == 25 and (info.width, info.height) == (256, 256)
    assert raw["source"]["video_start"] == pytest.approx(0.08, abs=1e-3) and raw["time_origin"] == pytest.approx(0.08, abs=1e-3)
    n = info.num_frames
    assert abs(n - 50.3 * 25) <= 3
    wav, sr = sf.read(str(info.path("audio.wav")), dtype="float32")
    assert abs(len(wav) / sr - n / 25) <= 1 / 25
    lag, corr = av_offset(mouth_opening(np.asarray(info.landmarks())), wav, sr, 25.0)
    assert abs(lag) <= 1 and corr > 0.15
    assert raw["quality"]["faces_found"] == n  # landmarks on every frame
    reproj, rot_step = pose_fit_errors(info)  # as in test_may_end_to_end, at 256²: half the pixel bound
    assert reproj < 1.25 and rot_step < 2.0
    assert info.feature().shape[0] == n


@pytest.mark.slow
def test_macron_raw_frame_index_is_two_frames_early(macron_dataset):
    """Control: reading the raw clip by frame index (ignoring its 80 ms start) and pairing it with audio from
    t = 0 shows the offset the pipeline removes: the sync measure peaks at -2 frames."""
    import av

    from avatar.preprocess.decode import decode_audio
    from avatar.preprocess.landmarks import FaceMeshTracker
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening

    video, info = macron_dataset
    seconds = 20.0  # the first 20 s are enough for a stable peak (checked: 10 s to 50 s all give -2)
    with av.open(str(video)) as c:
        src_fps = float(c.streams.video[0].average_rate)
        keep = set(np.round(np.arange(int(seconds * 25)) * src_fps / 25).astype(int).tolist())
        lms = []
        with FaceMeshTracker() as tr:
            for i, f in enumerate(c.decode(video=0)):  # index i is taken as time i / 30, as naive readers do
                if i > max(keep):
                    break
                if i in keep:
                    lm = tr(f.to_ndarray(format="rgb24", width=256, height=256))
                    assert lm is not None
                    lms.append(lm)
    wav, a0 = decode_audio(video)
    assert a0 == 0.0
    lag, _ = av_offset(mouth_opening(np.stack(lms)), wav[:int(seconds * 16000)], 16000, 25.0)
    assert lag == -2
    # and the dataset (aligned by pts) over the same span peaks at 0 +- 1
    wav_ds, sr = sf.read(str(info.path("audio.wav")), dtype="float32")
    lag_ds, _ = av_offset(mouth_opening(np.asarray(info.landmarks()[:int(seconds * 25)])), wav_ds[:int(seconds * sr)], sr, 25.0)
    assert abs(lag_ds) <= 1
