"""Hash-grid encodings against dense d-linear references (grid_sample on the same table)."""

import pytest
import torch
import torch.nn.functional as F

from avatar.model.hashgrid import HashGrid, TriPlaneHashEncoding, _hash_grid_encode_torch


@pytest.mark.parametrize("res", [2, 5])
def test_dense_3d_level_matches_trilinear_grid_sample(res):
    torch.manual_seed(0)
    g = HashGrid(dim=3, levels=1, features=2, base_res=res, max_res=res, log2_table=12, init_scale=1.0)
    assert g.hashed == [False]  # (res+1)^3 vertices fit: no collisions
    x = torch.rand(200, 3, dtype=torch.float64)
    table = g.table.detach().double()
    out = _hash_grid_encode_torch(x, table, g.offsets, g.resolutions, g.hashed)  # [200, 2]
    vol = table.reshape(res + 1, res + 1, res + 1, 2).permute(3, 0, 1, 2)[None]  # [1, F, z, y, x]
    grid = (x * 2 - 1).view(1, 200, 1, 1, 3)  # grid_sample wants (x, y, z) in [-1, 1]
    ref = F.grid_sample(vol, grid, mode="bilinear", align_corners=True)[0, :, :, 0, 0].T
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_dense_2d_levels_match_bilinear_and_concatenate():
    torch.manual_seed(1)
    g = HashGrid(dim=2, levels=3, features=1, base_res=3, max_res=9, log2_table=10, init_scale=1.0)
    assert not any(g.hashed)
    x = torch.rand(50, 2)
    out = g(x)
    assert out.shape == (50, 3)
    for lvl, res in enumerate(g.resolutions):
        tab = g.table[g.offsets[lvl]:g.offsets[lvl + 1]].detach().reshape(res + 1, res + 1)[None, None]  # [1,1,y,x]
        ref = F.grid_sample(tab, (x * 2 - 1).view(1, 50, 1, 2), mode="bilinear", align_corners=True)[0, 0, :, 0]
        torch.testing.assert_close(out[:, lvl].detach(), ref, rtol=1e-5, atol=1e-6)


def test_hashed_level_is_continuous_and_in_range():
    g = HashGrid(dim=3, levels=2, features=2, base_res=8, max_res=64, log2_table=8, init_scale=1.0)
    assert g.hashed[-1]  # 65^3 vertices do not fit 256 rows
    x = torch.rand(100, 3)
    eps = 1e-5
    a, b = g(x), g(x + eps)
    assert (a - b).abs().max() < 1e-2  # interpolation is continuous inside a cell
    # a vertex returns exactly its table row (weights are one-hot there)
    res = g.resolutions[1]
    v = torch.tensor([[3, 5, 7]]) / res
    row = ((3 * 1) ^ (5 * 2654435761) ^ (7 * 805459861)) % (g.offsets[2] - g.offsets[1])
    torch.testing.assert_close(g(v.float())[0, 2:], g.table[g.offsets[1] + row].detach(), rtol=1e-4, atol=1e-4)


def test_triplane_equals_three_plane_grids_and_has_gradients():
    torch.manual_seed(2)
    enc = TriPlaneHashEncoding(bound=2.0, levels=2, features=1, base_res=4, max_res=8, log2_table=10)
    x = (torch.rand(30, 3) * 2 - 1) * 2.0
    out = enc(x)
    assert out.shape == (30, enc.out_dim) == (30, 6)
    u = (x / 2.0 + 1) / 2
    ref = torch.cat([enc.grids[0](u[:, [0, 1]]), enc.grids[1](u[:, [1, 2]]), enc.grids[2](u[:, [0, 2]])], -1)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert all(gr.table.grad is not None and gr.table.grad.abs().sum() > 0 for gr in enc.grids)


def test_gradcheck_float64():
    g = HashGrid(dim=2, levels=2, features=1, base_res=2, max_res=4, log2_table=6, init_scale=1.0)
    table = g.table.detach().double().requires_grad_(True)
    x = torch.rand(5, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: _hash_grid_encode_torch(x, t, g.offsets, g.resolutions, g.hashed), (table,))
