"""Tests of the foundation: config dataclasses, atomic IO, dataset contract, CLI dispatch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from avatar.core.config import apply_overrides, field_docs, load_yaml, save_yaml, to_dict
from avatar.core.dataset_format import CameraPose, FrameCache, load_dataset
from avatar.errors import AvatarError
from avatar.core.io import atomic_path, write_json_atomic


@dataclasses.dataclass
class _Inner:
    lr: float = 1e-3
    """Learning rate."""
    kind: Literal["a", "b"] = "a"
    """Which kind."""


@dataclasses.dataclass
class _Outer:
    iters: int = 10
    """Number of iterations."""
    flag: bool = False
    """A switch."""
    out: Path = Path("x")
    """Where outputs go."""
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    """Nested component."""


def test_field_docs_read_from_source():
    docs = field_docs(_Outer)
    assert docs["iters"] == "Number of iterations."
    assert docs["inner"] == "Nested component."
    assert field_docs(_Inner)["kind"] == "Which kind."


def test_overrides_parse_types_and_reject_unknown():
    cfg = apply_overrides(_Outer(), {"iters": "25", "flag": "true", "inner.lr": "0.5", "inner.kind": "b"})
    assert (cfg.iters, cfg.flag, cfg.inner.lr, cfg.inner.kind) == (25, True, 0.5, "b")
    assert _Outer().iters == 10  # the default object is untouched
    with pytest.raises(AvatarError, match="no field 'inner.lrr'.*inner.lr"):
        apply_overrides(_Outer(), {"inner.lrr": "1"})
    with pytest.raises(AvatarError, match="choose one of a, b"):
        apply_overrides(_Outer(), {"inner.kind": "c"})
    with pytest.raises(AvatarError, match="cannot read"):
        apply_overrides(_Outer(), {"iters": "many"})


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(_Outer(), ["iters=7", "out=/tmp/y"])
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(_Outer, tmp_path / "c.yaml")
    assert back == cfg and isinstance(back.out, Path)
    (tmp_path / "bad.yaml").write_text("iters: 3\nnope: 1\n")
    with pytest.raises(AvatarError, match="unknown config field"):
        load_yaml(_Outer, tmp_path / "bad.yaml")
    assert to_dict(cfg)["inner"] == {"lr": 1e-3, "kind": "a"}


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    dst = tmp_path / "out.json"
    write_json_atomic(dst, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert json.loads(dst.read_text()) == {"a": 1}  # the old complete file survives
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


@pytest.fixture
def umask():
    """Set the process umask for one test and restore the old one afterwards."""
    import os

    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_outputs_get_the_umask_mode(tmp_path, umask, mask, file_mode, dir_mode):
    """Every output (metrics.json, config.yaml, .npy, a writer-by-path file like .ply, mp4, PNG-sequence
    folder) gets the mode `open(..., "w")` / `mkdir` gives under the user's umask (0666 / 0777 & ~umask),
    not the 0600 / 0700 of a private temporary file."""
    import os
    import stat

    from avatar.core.io import save_npy_atomic
    from avatar.core.video_writer import PngSequenceWriter, VideoWriter

    umask(mask)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    write_json_atomic(tmp_path / "metrics.json", {"psnr": 30.0})
    save_yaml(_Outer(), tmp_path / "config.yaml")
    save_npy_atomic(tmp_path / "a.npy", np.zeros(3))
    with atomic_path(tmp_path / "head.ply") as tmp:  # a writer that opens the path itself (plyfile, cv2)
        with open(tmp, "wb") as f:
            f.write(b"ply\n")
    vw = VideoWriter(tmp_path / "out.mp4", 16, 16, 25.0, num_frames=2)
    vw.write(np.zeros((2, 16, 16, 3), np.uint8))
    vw.close()
    pw = PngSequenceWriter(tmp_path / "seq", 8, 8, 25.0, num_frames=1)
    pw.write(np.zeros((1, 8, 8, 4), np.uint8))
    pw.close()
    for name in ("metrics.json", "config.yaml", "a.npy", "head.ply", "out.mp4", "seq/000000.png", "seq/sequence.json"):
        assert mode(tmp_path / name) == file_mode, (name, oct(mode(tmp_path / name)))
    assert mode(tmp_path / "seq") == dir_mode
    # the reference: what a plain new file gets under this umask
    (tmp_path / "plain").write_text("x")
    assert mode(tmp_path / "plain") == file_mode


def _write_min_dataset(root: Path, n: int = 4, h: int = 8, w: int = 6) -> None:
    import cv2

    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        cv2.imwrite(str(root / "frames" / f"{k:06d}.jpg"), np.full((h, w, 3), k * 10, np.uint8))
        cv2.imwrite(str(root / "masks" / f"{k:06d}.png"), np.full((h, w), k % 3, np.uint8))
    np.save(root / "feat.npy", np.zeros((n, 5), np.float32))
    write_json_atomic(root / "dataset.json", {
        "version": 1, "fps": 25, "num_frames": n, "width": w, "height": h,
        "split": {"train": [0, n - 1], "val": [n - 1, n]},
        "features": {"f": {"file": "feat.npy", "extractor": "test", "dim": 5, "fps": 25}},
        "default_feature": "f", "has_audio": False})


def test_dataset_contract(tmp_path):
    with pytest.raises(AvatarError, match="no such dataset folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "inc").mkdir()
    with pytest.raises(AvatarError, match="incomplete"):
        load_dataset(tmp_path / "inc")
    _write_min_dataset(tmp_path / "d")
    info = load_dataset(tmp_path / "d")
    assert info.num_frames == 4 and list(info.indices("val")) == [3]
    assert info.feature().shape == (4, 5)
    cache = FrameCache(info, capacity=2)
    for k in range(4):
        rgb, lab = cache.get(k)
        assert rgb.shape == (8, 6, 3) and lab.shape == (8, 6) and int(lab[0, 0]) == k % 3
    assert len(cache) == 2  # bounded


def test_camera_pose_round_trip(tmp_path):
    n = 3
    pose = CameraPose(R=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)), t=np.arange(9, dtype=np.float32).reshape(3, 3),
                      focal=500.0, cx=32.0, cy=30.0, shape3d=np.zeros((478, 3), np.float32))
    pose.save(tmp_path / "pose.npz")
    back = CameraPose.load(tmp_path / "pose.npz")
    np.testing.assert_array_equal(back.viewmats()[:, :3, 3], pose.t)
    assert back.K[0, 0] == 500.0 and back.K[1, 2] == 30.0


def test_cli_help_and_bad_input():
    run = lambda *a: subprocess.run([sys.executable, "-m", "avatar.cli", *a], capture_output=True, text=True, timeout=120)
    r = run("--help")
    assert r.returncode == 0 and "avatar preprocess" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("avatar ")
    r = run("no-such-command")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_console_mutes_native_stderr_but_not_python(tmp_path):
    """The `avatar` console script routes native fd-2 chatter (MediaPipe/TFLite) to /dev/null while
    Python's stderr (progress bars, one-line errors) still reaches the terminal; AVATAR_VERBOSE=1 keeps all."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from avatar.core.logs import mute_native_stderr; mute_native_stderr(); "
            "os.write(2, b'native-line\\n'); print('python-line', file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "AVATAR_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "python-line" in quiet.stderr and "native-line" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "AVATAR_VERBOSE": "1"}, timeout=60)
    assert "python-line" in loud.stderr and "native-line" in loud.stderr


def test_missing_required_input_fails_instead_of_skipping(tmp_path):
    """conftest `require`: a missing data file (AVATAR_SHARED_DATA pointing at an empty folder) or extension
    skips on a developer machine and FAILS when AVATAR_REQUIRE lists its kind (as .ci/run sets it); a
    misspelt kind is a usage error, so a typo cannot relax CI."""
    import os

    tests_dir = Path(__file__).resolve().parent
    (tmp_path / "test_needs.py").write_text(
        "from conftest import require, shared_file\n\n"
        "def test_needs_data(shared_data):\n    shared_file('video/may_5s.mp4')\n\n"
        "def test_needs_ext():\n    require('ext', 'pretend the extension did not build')\n")

    def run(require: str | None) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "AVATAR_REQUIRE"}
        env |= {"AVATAR_SHARED_DATA": str(tmp_path / "nodata"), "PYTHONPATH": str(tests_dir)}
        if require is not None:
            env["AVATAR_REQUIRE"] = require
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "conftest", "-p", "no:cacheprovider",
                               str(tmp_path / "test_needs.py")], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = run(None)
    assert rc == 0 and "2 skipped" in out and "real data not found" in out
    rc, out = run("data,ext,nvcc,browser")  # a failing fixture is reported as an error, a failing test as failed
    assert rc == 1 and "skipped" not in out and "1 error" in out and "1 failed" in out
    assert "AVATAR_REQUIRE includes 'data'" in out and "AVATAR_REQUIRE includes 'ext'" in out
    rc, out = run("data")
    assert rc == 1 and "1 error" in out and "1 skipped" in out
    rc, out = run("dta")
    assert rc != 0 and "unknown kind" in out
