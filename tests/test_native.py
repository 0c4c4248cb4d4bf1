"""Native-resolution output (issue 12): the size contract, the head-crop layer, old runs, bad --size input.

Real-data checks (mouth sharpness, seams, landscape/portrait clips) are in tests/test_native_real.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar.core.camera import crop_intrinsics, output_frame, parse_size
from test_speak_support import get_tiny_run, talking_wav


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


# ---- the size contract, by hand ---------------------------------------------------------------------


def test_output_frame_defaults_to_the_source_and_keeps_the_aspect():
    f = output_frame(512, 512)
    assert (f.width, f.height, f.sx, f.sy) == (512, 512, 1.0, 1.0)
    assert (output_frame(1920, 1080, "x720").width, output_frame(1920, 1080, "x720").height) == (1280, 720)
    assert (output_frame(1920, 1080, "1280x").width, output_frame(1920, 1080, "1280x").height) == (1280, 720)
    assert (output_frame(1920, 1080, "1280x720").width, output_frame(1920, 1080, "1280x720").height) == (1280, 720)
    f = output_frame(1080, 1920, scale=0.5)
    assert (f.width, f.height) == (540, 960)
    assert parse_size(" 640 X 360 ") == (640, 360) and parse_size("640") == (640, None)


def test_other_aspect_needs_an_explicit_fit_and_each_fit_maps_the_source_by_hand():
    with pytest.raises(ValueError, match="--fit"):
        output_frame(512, 512, "1920x1080")
    K = np.array([[1000.0, 0, 256], [0, 1000.0, 256], [0, 0, 1]])
    # crop: scale 1080/512 ... no: cover 1920 wide -> s = 3.75, the source centre lands on the output centre
    c = output_frame(512, 512, "1920x1080", fit="crop")
    Kc = c.intrinsics(K)
    assert (c.width, c.height, c.render_w, c.render_h) == (1920, 1080, 1920, 1080)
    assert Kc[0, 0] == pytest.approx(3750.0) and (Kc[0, 2], Kc[1, 2]) == pytest.approx((960.0, 540.0))
    # pad: fit 1080 high -> s = 2.109375, a 1080x1080 image pasted 420 px from the left
    p = output_frame(512, 512, "1920x1080", fit="pad")
    assert (p.render_w, p.render_h, p.pad_x, p.pad_y) == (1080, 1080, 420, 0)
    assert p.intrinsics(K)[0, 0] == pytest.approx(1000 * 1080 / 512)
    # stretch: x and y apart
    s = output_frame(512, 512, "1920x1080", fit="stretch")
    assert (s.sx, s.sy) == (1920 / 512, 1080 / 512)


@pytest.mark.parametrize("bad", ["0x0", "99999x99999", "abc", "12.5x7", "-5x10", "x"])
def test_bad_sizes_are_one_line_value_errors(bad):
    with pytest.raises(ValueError) as e:
        output_frame(512, 512, bad)
    assert "\n" not in str(e.value) and "--size" in str(e.value)


def test_crop_intrinsics_project_a_point_to_the_crop_pixel():
    K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    X = np.array([0.05, -0.02, 1.3])
    u, v = (K @ X)[:2] / X[2]
    x0, y0, d = 250.0, 100.0, 0.5
    uc, vc = (crop_intrinsics(K, x0, y0, d) @ X)[:2] / X[2]
    assert (uc, vc) == pytest.approx(((u - x0) * d, (v - y0) * d))


# ---- the head layer ---------------------------------------------------------------------------------


def test_head_crop_at_native_density_equals_the_full_frame_layers(tiny_run):
    """With head_px 0 the crop is rendered at the output density with a shifted principal point: pasted
    over the body layer it must give what the head layer rendered over the whole frame gives (the feather
    rim only touches pixels the head does not cover)."""
    from avatar.engine import Avatar
    from avatar.engine.composite import render_layers

    av = Avatar.load(tiny_run, device="cpu")
    m = av.model
    assert m.cfg.layered
    W = av.feature_window
    feats = torch.zeros(2, W, av.feature_dim)
    vm, bl = av.train_viewmats[:2], torch.zeros(2)
    w, h = 2 * av.width, 2 * av.height
    K = av.K.clone()
    K[:2] *= 2
    with torch.no_grad():
        out = render_layers(m, vm, feats, bl, K, w, h, None, head_px=0, body_px=0)
        body = m.render(vm, None, bl, K, w, h, None, parts="body")
        head = m.render(vm, feats, bl, K, w, h, None, parts="head")
    ref = head["rgb"] + (1 - head["alpha"]) * body["rgb"]
    diff = (out["rgb"] - ref).abs()  # [2, h, w, 3]
    assert float(diff.mean()) < 5e-3  # the rim and beyond: faint wide Gaussians of a blobby 20-step model
    for i in range(2):
        x0, y0, x1, y1 = (int(v) for v in out["boxes"][i])
        assert out["head_sizes"][i] == (x1 - x0, y1 - y0)  # native density: one crop pixel per output pixel
        rim = int(math.ceil(max(2.0, 0.06 * min(x1 - x0, y1 - y0))))
        ya, yb, xa, xb = max(0, y0 + rim), min(h, y1 - rim), max(0, x0 + rim), min(w, x1 - rim)
        assert yb > ya and xb > xa
        inner = diff[i, ya:yb, xa:xb]
        outer = (out["rgb"][i] - body["rgb"][i]).abs()
        outer[max(0, y0):y1, max(0, x0):x1] = 0
        # inside the rim: the same pixels up to float summation order; outside the crop: the body layer itself
        assert float(inner.max()) < 1e-3 and float(outer.max()) == 0.0


def test_speak_writes_the_source_size_and_size_overrides(tiny_run, tmp_path):
    import av as pyav
    import soundfile as sf

    from avatar.cli import main

    wav = tmp_path / "a.wav"
    sf.write(str(wav), talking_wav(0.6), 16000)
    for extra, want in (([], (64, 64)), (["--size", "x96"], (96, 96)), (["--scale", "1.5"], (96, 96)),
                        (["--size", "160x90", "--fit", "pad"], (160, 90)), (["--size", "160x90", "--fit", "crop"], (160, 90))):
        out = tmp_path / f"o{len(extra)}{'_'.join(extra)}.mp4"
        assert main(["speak", str(tiny_run), "--audio", str(wav), "-o", str(out), "--vad", "off", *extra]) == 0
        with pyav.open(str(out)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == want


@pytest.mark.parametrize("args", [["--size", "0x0"], ["--size", "99999x99999"], ["--size", "big"],
                                  ["--size", "160x90"], ["--scale", "0"], ["--scale", "200"], ["--fit", "zoom"]])
def test_bad_size_is_one_line_exit_2_and_no_file(tiny_run, tmp_path, capsys, args):
    import soundfile as sf

    from avatar.cli import main

    wav = tmp_path / "a.wav"
    sf.write(str(wav), talking_wav(0.4), 16000)
    out = tmp_path / "out.mp4"
    try:
        rc = main(["speak", str(tiny_run), "--audio", str(wav), "-o", str(out), *args])
    except SystemExit as e:  # argparse's own choice check (--fit zoom)
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert not out.exists() and not list(tmp_path.glob("*.mp4*"))
    assert "Traceback" not in "\n".join(err)
    if args[0] != "--fit":
        assert len(err) == 1 and err[0].startswith("avatar: error:")


def test_view_size_rule_and_bad_size(tiny_run, capsys):
    from avatar.cli import main

    assert main(["view", str(tiny_run), "--size", "0x0"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


# ---- old runs ---------------------------------------------------------------------------------------


def test_old_run_without_source_size_speaks_at_its_dataset_size(tiny_run, tmp_path):
    """A model.pt from before issue 12: no "source"/"plate", a model config without layered/head_px/body_px.
    It loads, renders one joint pass (as it was trained) and speaks at its dataset size."""
    from avatar.engine import Avatar, SpeakConfig, Speaker

    payload = torch.load(tiny_run / "model.pt", map_location="cpu", weights_only=False)
    for k in ("source", "plate"):
        payload.pop(k, None)
    for k in ("layered", "head_px", "body_px"):
        payload["config"]["model"].pop(k, None)
    payload["dataset"]["width"], payload["dataset"]["height"] = 80, 80
    old = tmp_path / "old"
    old.mkdir()
    torch.save(payload, old / "model.pt")
    av = Avatar.load(old, device="cpu")
    assert not av.model.cfg.layered and (av.source_width, av.source_height) == (80, 80)
    sp = Speaker(av, SpeakConfig(vad="off"))
    frames = list(sp.frames(talking_wav(0.3)))
    assert frames and frames[0].rgb.shape == (80, 80, 3)


def test_unreadable_old_model_says_refit_in_one_line(tmp_path):
    from avatar.engine import Avatar
    from avatar.errors import AvatarError

    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(AvatarError) as e:
        Avatar.load(tmp_path)
    assert "re-run `avatar fit`" in str(e.value) and "\n" not in str(e.value)


def test_feather_window_is_zero_on_the_border_and_one_inside():
    from avatar.engine.composite import feather_window

    w = feather_window(20, 30, 4.0, "cpu")[..., 0]
    assert float(w[0].max()) < 0.05 and float(w[:, 0].max()) < 0.05  # first pixel centre at 0.5 px of a 4 px rim
    assert torch.all(w[4:-4, 4:-4] == 1)
    assert math.isclose(float(w[10, 2]), (lambda t: t * t * (3 - 2 * t))(2.5 / 4), rel_tol=1e-6)
