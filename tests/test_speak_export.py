"""`avatar export`: a standard 3DGS .ply of the canonical Gaussians, and the training motion .npz."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.cli import main
from test_speak_support import get_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


def test_export_ply_and_motion(tiny_run, tmp_path, capsys):
    from plyfile import PlyData

    from avatar.engine.runtime import Avatar

    ply, motion = tmp_path / "a.ply", tmp_path / "m.npz"
    assert main(["export", str(tiny_run), "--ply", str(ply), "--motion", str(motion)]) == 0
    v = PlyData.read(str(ply))["vertex"].data
    av = Avatar.load(tiny_run, device="cpu")
    m = av.model
    n = len(m.head) + len(m.mouth) + len(m.torso)
    assert len(v) == n
    k = m.head.sh.shape[1]
    names = set(v.dtype.names)
    for nm in ("x", "y", "z", "f_dc_0", "opacity", "scale_2", "rot_3", f"f_rest_{3 * (k - 1) - 1}"):
        assert nm in names, nm
    # values round-trip: head Gaussians first, positions / logit opacity / log scales unchanged
    h = len(m.head)
    np.testing.assert_allclose(np.stack([v["x"][:h], v["y"][:h], v["z"][:h]], 1), m.head.params["means"].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(v["opacity"][:h], m.head.params["opacity_logits"].detach().numpy(), atol=1e-6)
    q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    z = np.load(motion)
    assert z["head"].shape == tuple(av.train_viewmats.shape) and z["blink"].shape == tuple(av.train_blink.shape)
    # head-only export
    assert main(["export", str(tiny_run), "--ply", str(tmp_path / "h.ply"), "--parts", "head"]) == 0
    assert len(PlyData.read(str(tmp_path / "h.ply"))["vertex"].data) == h
    capsys.readouterr()
    assert main(["export", str(tiny_run)]) != 0
    assert main(["export", str(tiny_run), "--ply", str(tmp_path / "x.ply"), "--parts", "nose"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("avatar: error:") for line in err) and len(err) == 2
