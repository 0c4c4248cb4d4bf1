"""Model modules against simple references: audio path, region attention, rotations, deformation."""

import math

import pytest
import torch

from avatar.model.audio import AudioAttNet, AudioEncoder, AudioNet, feature_windows
from avatar.model.deform import FaceDeformer, MouthDeformer
from avatar.model.geometry import matrix_to_quat, quat_multiply, quat_to_matrix


def _random_rotations(n):
    q = torch.nn.functional.normalize(torch.randn(n, 4, dtype=torch.float64), dim=-1)
    return quat_to_matrix(q), q


def test_quaternion_round_trip_and_product():
    torch.manual_seed(0)
    R, q = _random_rotations(64)
    q2 = matrix_to_quat(R)
    assert torch.allclose(torch.minimum((q2 - q).abs().sum(-1), (q2 + q).abs().sum(-1)), torch.zeros(64, dtype=torch.float64), atol=1e-9)
    R2, p = _random_rotations(64)
    torch.testing.assert_close(quat_to_matrix(quat_multiply(p, q)), R2 @ R)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)


def test_audio_att_net_is_a_convex_combination():
    torch.manual_seed(0)
    att = AudioAttNet(dim=32, length=9)
    codes = torch.randn(4, 9, 32)
    w = att.weights(codes)
    torch.testing.assert_close(w.sum(-1), torch.ones(4))
    assert (w >= 0).all()
    torch.testing.assert_close(att(codes), torch.einsum("ba,bac->bc", w, codes))
    # identical codes in the window -> output equals that code, whatever the weights
    same = torch.randn(2, 1, 32).expand(2, 9, 32)
    torch.testing.assert_close(att(same), same[:, 0], rtol=1e-5, atol=1e-6)


def test_audio_encoder_windows_and_normalisation():
    torch.manual_seed(0)
    enc = AudioEncoder(in_dim=5, dim=32, audio_window=5, att_window=3)
    assert enc.window == 7
    feats = torch.randn(20, 5) * 3 + 1
    enc.set_normalisation(feats)
    wins = feature_windows(feats, enc.window)  # [20, 7, 5]
    assert wins.shape == (20, 7, 5)
    torch.testing.assert_close(wins[10, 3], feats[10])  # centred
    torch.testing.assert_close(wins[0, 0], feats[0])  # edge padded
    torch.testing.assert_close(wins[19, 6], feats[19])
    # unsmoothed code = AudioNet on the centre sub-window of normalised rows
    x = (wins - enc.feat_mean) / enc.feat_std
    torch.testing.assert_close(enc(wins, smooth=False), enc.net(x[:, 1:6]))
    # smoothed code = AudioAttNet over the AudioNet codes of the 3 neighbouring sub-windows
    codes = torch.stack([enc.net(x[:, j:j + 5]) for j in range(3)], 1)
    torch.testing.assert_close(enc(wins), enc.att(codes), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        enc(torch.zeros(2, 6, 5))


def test_feature_windows_default_is_the_old_centred_window():
    feats = torch.randn(13, 4)
    for window in (1, 3, 5, 7, 17, 4):  # odd model windows, and an even one (old formula: r = window // 2)
        r = window // 2
        idx = (torch.arange(13)[:, None] + torch.arange(-r, window - r)[None]).clamp(0, 12)
        old = feats[idx]
        assert torch.equal(feature_windows(feats, window), old)
        assert torch.equal(feature_windows(feats, window, window - 1 - r), old)
    enc = AudioEncoder(in_dim=4, audio_window=9, att_window=9)  # lookahead -1 (centred) by default
    assert (enc.lookahead, enc.window, enc.past, enc.future) == (-1, 17, 8, 8)
    assert torch.equal(feature_windows(feats, enc.window, enc.future), feature_windows(feats, enc.window))


def test_feature_windows_with_lookahead():
    feats = torch.arange(30, dtype=torch.float32)[:, None].expand(30, 2).contiguous()  # row j holds j
    enc = AudioEncoder(in_dim=2, audio_window=9, att_window=9, lookahead=2)
    assert (enc.window, enc.past, enc.future) == (17, 14, 2)
    wins = feature_windows(feats, enc.window, enc.future)  # [30, 17, 2]
    for k in (0, 5, 14, 20, 27, 29):
        want = torch.arange(k - 14, k + 3).clamp(0, 29).float()  # rows k - 14 ... k + 2, edge padded
        assert torch.equal(wins[k, :, 0], want), k
        assert wins[k, enc.past, 0] == k  # the frame's own row sits at index `past`
    assert wins[20, -1, 0] == 22  # the window of frame k ends at row k + 2
    # 0 = fully causal, W - 1 = fully in the future
    assert torch.equal(feature_windows(feats, 5, 0)[10, :, 0], torch.arange(6.0, 11.0))
    assert torch.equal(feature_windows(feats, 5, 4)[10, :, 0], torch.arange(10.0, 15.0))
    for bad in (-2, 17, 40):
        with pytest.raises(ValueError):
            AudioEncoder(in_dim=2, audio_window=9, att_window=9, lookahead=bad)
    with pytest.raises(ValueError):
        feature_windows(feats, 5, 5)
    # the encoder's code of frame k depends on rows up to k + 2 only
    torch.manual_seed(0)
    enc.set_normalisation(torch.randn(50, 2))
    f = torch.randn(30, 2)
    g = f.clone()
    g[23:] += 5.0  # change rows after 20 + 2
    a = enc(feature_windows(f, enc.window, enc.future))
    b = enc(feature_windows(g, enc.window, enc.future))
    torch.testing.assert_close(a[:21], b[:21])
    assert not torch.allclose(a[21], b[21])


def test_model_lookahead_from_config_and_old_configs():
    from avatar.core.config import from_dict, to_dict
    from avatar.model.config import ModelConfig

    assert ModelConfig().audio_lookahead == -1
    d = to_dict(ModelConfig(audio_lookahead=2))
    assert d["audio_lookahead"] == 2
    old = {k: v for k, v in d.items() if k != "audio_lookahead"}  # a model.pt written before the field existed
    assert from_dict(ModelConfig, old).audio_lookahead == -1
    assert "lookahead" not in dict(AudioEncoder(3, lookahead=1).state_dict())  # not a buffer: state dicts unchanged


def test_audio_net_reduces_any_odd_window():
    for w in (3, 9, 17):
        assert AudioNet(7, 32, w)(torch.randn(2, w, 7)).shape == (2, 32)


def test_face_deformer_region_attention_reference():
    torch.manual_seed(0)
    fd = FaceDeformer(audio_dim=8, levels=2, base_res=4, max_res=8, log2_table=8, hidden=16)
    torch.nn.init.normal_(fd.net[-1].weight)  # non-zero output layer
    x = torch.rand(10, 3) * 2 - 1
    a = torch.randn(3, 8)
    e = torch.tensor([0.0, 0.5, 1.0])
    out = fd(x, a, e)
    h = fd.enc(x)
    w_a, w_e = fd.attn_audio(h), torch.sigmoid(fd.attn_eye(h))
    for b in range(3):
        z = torch.cat([h, a[b] * w_a, e[b] * w_e], -1)
        o = fd.net(z)
        torch.testing.assert_close(out["d_xyz"][b], o[:, :3])
        torch.testing.assert_close(out["d_rot"][b], o[:, 3:7])
        torch.testing.assert_close(out["d_scale"][b], o[:, 7:10])
    # a point whose audio gate is zero ignores the audio entirely
    with torch.no_grad():
        fd.attn_audio[-1].weight.zero_()
    o1, o2 = fd(x, a, e), fd(x, torch.randn(3, 8), e)
    torch.testing.assert_close(o1["d_xyz"], o2["d_xyz"])


def test_deformers_start_as_identity():
    fd, md = FaceDeformer(audio_dim=8, levels=2, base_res=4, max_res=8, log2_table=8), MouthDeformer(audio_dim=8, levels=2, log2_table=8)
    x = torch.rand(6, 3)
    a = torch.randn(2, 8)
    assert fd(x, a, torch.ones(2))["d_xyz"].abs().max() == 0
    assert md(x, a).abs().max() == 0


def test_mouth_motion_is_mostly_vertical():
    """The mouth interior opens and closes: with random (trained-like) last-layer weights, over many points
    and audio codes, the sideways and front-back motion stay well below the vertical motion (RMS < half)."""
    rms = torch.zeros(3)
    for seed in range(4):
        torch.manual_seed(seed)
        md = MouthDeformer(audio_dim=4, levels=2, log2_table=8)
        with torch.no_grad():
            md.net[-1].weight.normal_()
        o = md(torch.rand(200, 3), torch.randn(8, 4))  # [8, 200, 3] (up, right, front)
        rms += o.detach().pow(2).mean(dim=(0, 1))
    up, right, front = rms.sqrt().tolist()
    assert up > 0 and right < 0.5 * up and front < 0.5 * up


def test_densify_strategy_clone_split_prune_keeps_optimizer_aligned():
    from avatar.model.gaussians import GaussianSet
    from avatar.train.config import StrategyConfig
    from avatar.train.strategy import DensifyStrategy

    torch.manual_seed(0)
    n = 200
    gs = GaussianSet(n, sh_degree=1)
    with torch.no_grad():
        gs.params["means"].normal_()
        gs.params["log_scales"].fill_(math.log(0.005))
        gs.params["log_scales"][100:150] = math.log(0.05)  # large: split
        gs.params["opacity_logits"].fill_(2.0)
        gs.params["opacity_logits"][190:] = -8.0  # transparent: pruned
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k} for k, p in gs.params.items()])
    sum(p.sum() for p in gs.params.values()).backward()
    opt.step()
    cfg = StrategyConfig(refine_start=0, refine_stop=100, refine_every=1, grad_threshold=1e-3, split_scale=0.01,
                         prune_opacity=0.01, prune_scale=10.0, max_gaussians=10000)
    st = DensifyStrategy(cfg, unit=1.0, total_iters=100)
    st._reset("head", n, "cpu")
    st.state["head"]["count"] += 1
    st.state["head"]["grad2d"][:20] = 1.0  # small + high gradient: clone
    st.state["head"]["grad2d"][100:110] = 1.0  # large + high gradient: split
    before_means = gs.params["means"][100:110].detach().clone()
    rep = st.refine({"head": gs}, opt, step=1)
    assert (rep["cloned"], rep["split"], rep["pruned"]) == (20, 10, 10)
    assert len(gs) == 200 + 20 + 10 - 10
    for group in opt.param_groups:
        p = group["params"][0]
        assert p is gs.params[group["name"]]
        s = opt.state[p]
        assert s["exp_avg"].shape == p.shape and s["exp_avg_sq"].shape == p.shape
    # split children are smaller (÷1.6) and near their parents
    small = torch.exp(gs.params["log_scales"]).max(-1).values
    assert int((small * 1.6 / 0.05 - 1).abs().lt(0.01).sum()) == 20  # (Adam moved log-scales by ~1e-3)
    assert not any(torch.allclose(gs.params["means"], m.expand_as(gs.params["means"])) for m in before_means)
    assert st.state["head"]["count"].shape == (len(gs),) and st.state["head"]["count"].sum() == 0
