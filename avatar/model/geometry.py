"""Rotation helpers (quaternions are w, x, y, z). Landmark index sets live in `avatar.core.landmarks`."""

from __future__ import annotations

import torch
import torch.nn.functional as F



def quat_normalize(q: torch.Tensor) -> torch.Tensor:
    return F.normalize(q, dim=-1)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of [..., 4] wxyz quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """[..., 4] wxyz (normalised inside) -> [..., 3, 3]."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation -> [..., 4] wxyz with w >= 0 (Shepperd's method, branch-free via argmax)."""
    m = R.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    cand = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m00 - m11 - m22, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m00 + m11 - m22, m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m00 - m11 + m22], -1),
    ], 1)  # [M, 4 candidates, 4]
    diag = torch.stack([m00 + m11 + m22, m00, m11, m22], -1)  # [M, 4]
    best = diag.argmax(-1)
    q = cand[torch.arange(m.shape[0]), best]
    q = quat_normalize(q)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(R.shape[:-2] + (4,))


def axis_angle_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> [..., 3] rotation vector (small-angle safe)."""
    q = matrix_to_quat(R)
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    angle = 2 * torch.atan2(s, q[..., :1])
    return v / s * angle
