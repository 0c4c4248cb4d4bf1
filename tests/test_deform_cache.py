"""Inference memo of the deformers' audio-independent terms (avatar/model/deform.py `_InferenceCache`):
bit-identical to the uncached computation, computed once per set of positions, invalidated by any
parameter update, never used with autograd on."""

from __future__ import annotations

import torch

from avatar.model.deform import FaceDeformer, MouthDeformer


def _face():
    torch.manual_seed(0)
    net = FaceDeformer(audio_dim=8, levels=4, base_res=4, max_res=16, log2_table=10, hidden=16)
    for p in net.parameters():  # non-trivial weights (the output layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(200, 3) * 2 - 1
    return net, x, torch.randn(3, 8), torch.rand(3)


def _count_encodes(net) -> list[int]:
    calls = []
    net.enc.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_face_cache_is_exact_and_computed_once():
    net, x, audio, blink = _face()
    calls = _count_encodes(net)
    ref = net(x, audio, blink)  # autograd on: never cached
    ref2 = net(x, audio, blink)
    assert len(calls) == 2
    with torch.no_grad():
        a = net(x, audio, blink)
        b = net(x.clone(), audio[:1], blink[:1])  # equal positions, another batch
    assert len(calls) == 3  # one lookup for both no-grad calls
    for k in ("d_xyz", "d_rot", "d_scale", "w_a", "w_e"):
        assert torch.equal(a[k], ref[k].detach()) and torch.equal(ref[k], ref2[k])
    assert torch.equal(b["d_xyz"], net(x, audio[:1], blink[:1])["d_xyz"].detach())


def test_face_cache_follows_positions_and_parameters():
    net, x, audio, blink = _face()
    with torch.no_grad():
        a = net(x, audio, blink)
        x2 = x.clone()
        x2[0, 0] += 0.1
        moved = net(x2, audio, blink)  # other positions: recomputed
        assert not torch.equal(moved["w_a"], a["w_a"])
        for p in net.enc.parameters():  # an optimizer-style in-place update of the hash table
            p.add_(0.5)
        after = net(x, audio, blink)
    fresh = net(x, audio, blink)  # autograd on: the uncached truth for the updated parameters
    assert not torch.equal(after["d_xyz"], a["d_xyz"])
    assert torch.equal(after["d_xyz"], fresh["d_xyz"].detach()) and torch.equal(after["w_e"], fresh["w_e"].detach())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for v in state.values():
        v.mul_(0.5)
    net.load_state_dict(state)  # loading weights invalidates too
    with torch.no_grad():
        loaded = net(x, audio, blink)
    assert torch.equal(loaded["d_xyz"], net(x, audio, blink)["d_xyz"].detach())


def test_mouth_cache_is_exact():
    torch.manual_seed(1)
    net = MouthDeformer(audio_dim=8, levels=4, base_res=4, max_res=16, log2_table=10, hidden=16)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    calls = _count_encodes(net)
    x, audio = torch.rand(50, 3) * 2 - 1, torch.randn(4, 8)
    ref = net(x, audio)
    with torch.no_grad():
        a, b = net(x, audio), net(x, audio)
    assert torch.equal(a, ref.detach()) and torch.equal(b, a) and len(calls) == 2


def _avatar():
    """A small AvatarModel with non-trivial random parameters, in front of an identity camera."""
    from avatar.model.avatar_model import AvatarModel
    from avatar.model.config import ModelConfig

    torch.manual_seed(3)
    m = AvatarModel(ModelConfig(layered=True), 6, {"head": 300, "mouth": 40, "torso": 80})
    with torch.no_grad():
        for name, p in m.named_parameters():
            torch.nn.init.normal_(p, std=0.3)
        for s in (m.head, m.mouth, m.torso):
            s.params["means"].uniform_(-0.4, 0.4)
            s.params["log_scales"].uniform_(-3.5, -2.5)
        m.unit.fill_(0.5)
        m.bound.fill_(0.6)
        m.ref_viewmat.copy_(torch.eye(4))
        m.ref_viewmat[2, 3] = 3.0
        m.torso_center.copy_(torch.tensor([0.0, 0.3, 3.0]))
    vm = torch.eye(4).repeat(2, 1, 1)
    vm[:, 2, 3] = 3.0
    vm[1, 0, 3] = 0.05
    K = torch.tensor([[60.0, 0, 24], [0, 60.0, 20], [0, 0, 1]])
    feats = torch.randn(2, m.audio.window, 6)
    return m, (vm, feats, torch.rand(2), K, 48, 40)


def _render(m, args, grad: bool):
    from avatar.engine.composite import render_layers

    with torch.set_grad_enabled(grad):
        out = render_layers(m, *args, background=torch.tensor([0.2, 0.3, 0.4]), backend="torch")
    return out["rgb"].detach(), out["boxes"]


def test_model_static_terms_are_exact_and_follow_every_change():
    """AvatarModel.static: per-Gaussian terms every frame shares (SH, opacities, scales, quaternions, the torso's
    reference frame, the head box's points) memoised at inference: the frames equal the autograd path's bit for
    bit, and stay equal after an in-place update (optimizer step), a buffer change and a densification-style
    replacement of a set's parameters by new, larger tensors."""
    m, args = _avatar()
    truth, boxes = _render(m, args, grad=True)
    assert float(truth.std()) > 0.01  # something is drawn
    a, ba = _render(m, args, grad=False)
    b, _ = _render(m, args, grad=False)
    assert torch.equal(a, truth) and torch.equal(b, truth) and (ba == boxes).all()
    assert m._static_memo  # the memo is in use

    with torch.no_grad():
        m.head.params["sh0"].add_(0.2)  # optimizer-style in-place step
        m.torso.params["opacity_logits"].mul_(0.5)
    stepped, _ = _render(m, args, grad=False)
    assert not torch.equal(stepped, truth) and torch.equal(stepped, _render(m, args, grad=True)[0])

    with torch.no_grad():
        m.ref_viewmat[0, 3] = 0.1  # a buffer (the torso's reference pose)
    moved, _ = _render(m, args, grad=False)
    assert not torch.equal(moved, stepped) and torch.equal(moved, _render(m, args, grad=True)[0])

    for name in list(m.head.params.keys()):  # densification: every parameter of a set replaced, 20 more points
        p = m.head.params[name].data
        m.head.params[name] = torch.nn.Parameter(torch.cat([p, p[:20]]))
    with torch.no_grad():
        m.head.params["means"][-20:] += 0.05
    grown, _ = _render(m, args, grad=False)
    assert not torch.equal(grown, moved) and torch.equal(grown, _render(m, args, grad=True)[0])


def test_tail_quantile_is_torch_quantile_bit_for_bit():
    """The head box's outer 0.2 % (avatar/engine/composite.py `tail_quantile`, a partial selection) equals
    torch.quantile's linear interpolation exactly, ties and both tails included."""
    from avatar.engine.composite import tail_quantile

    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 20000, (1,), generator=g))
        x = torch.randn(2, n, 2, generator=g) * 300
        if seed % 3 == 0:
            x = x.round()  # many ties
        for q in (0.002, 0.998, 0.0, 1.0, 0.3):
            assert torch.equal(tail_quantile(x, q), x.quantile(q, dim=1)), (seed, n, q)


def test_model_static_terms_under_inference_mode():
    """The viewer renders under torch.inference_mode(), whose tensors have no version counter: frames still equal
    the autograd path's, first and repeated, and a later no-grad render is unaffected."""
    from avatar.engine.composite import render_layers

    m, args = _avatar()
    truth, _ = _render(m, args, grad=True)
    for _ in range(2):
        with torch.inference_mode():
            out = render_layers(m, *args, background=torch.tensor([0.2, 0.3, 0.4]), backend="torch")
        assert torch.equal(out["rgb"], truth)
    assert torch.equal(_render(m, args, grad=False)[0], truth)
