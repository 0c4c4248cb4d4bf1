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
