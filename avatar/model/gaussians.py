"""A set of 3D Gaussians (raw parameters, activated properties) and the initialisers of each set.

Raw parameters are stored and activated through properties, as in 3D Gaussian Splatting
(Kerbl et al. 2023, graphdeco-inria/gaussian-splatting scene/gaussian_model.py): scales = exp(log_scales),
opacities = sigmoid(logits), quaternions normalised when used.

Initialisation (our choice, design/model.md §6.1): instead of TalkingGaussian's random cube we start
from the person's fitted 3D landmark shape (like GaussianTalker starts from the tracked 3DMM mean):
dense samples on the triangulated landmark surface for the face, an ellipsoid shell behind it for
hair and the back of the head, a small volume behind the inner lips for teeth/tongue, and the
neck/torso pixels of a reference frame unprojected at the head's depth. Colours are sampled from
that reference frame, so training starts from a recognisable picture (matters on 2 CPU cores).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from avatar.core.landmarks import CHIN, FOREHEAD, LIPS_INNER

SH_C0 = 0.28209479177387814


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    return (rgb - 0.5) / SH_C0


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


class GaussianSet(nn.Module):
    """N Gaussians: means [N,3], quats [N,4] (wxyz, raw), log_scales [N,3], opacity_logits [N],
    sh0 [N,1,3], shN [N,K-1,3] (degree > 0), optional skin_logits [N] (torso)."""

    def __init__(self, n: int, sh_degree: int, skinned: bool = False):
        super().__init__()
        self.sh_degree = sh_degree
        p = {
            "means": torch.zeros(n, 3),
            "quats": torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
            "log_scales": torch.full((n, 3), -5.0),
            "opacity_logits": torch.zeros(n),
            "sh0": torch.zeros(n, 1, 3),
        }
        if sh_degree > 0:
            p["shN"] = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
        if skinned:
            p["skin_logits"] = torch.full((n,), -4.0)
        self.params = nn.ParameterDict({k: nn.Parameter(v) for k, v in p.items()})

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def quats(self) -> torch.Tensor:
        return self.params["quats"]

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.params["log_scales"])

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.params["opacity_logits"])

    @property
    def sh(self) -> torch.Tensor:
        """[N, K, 3] SH coefficients."""
        if "shN" in self.params:
            return torch.cat([self.params["sh0"], self.params["shN"]], 1)
        return self.params["sh0"]

    def set_from(self, means: np.ndarray, scales: np.ndarray, rgb: np.ndarray, opacity: np.ndarray,
                 skin: np.ndarray | None = None) -> None:
        """Fill every parameter from numpy arrays ([N,3], [N] or [N,3], [N,3] in [0,1], [N])."""
        n = means.shape[0]
        assert len(self) == n
        with torch.no_grad():
            self.params["means"].copy_(torch.as_tensor(means, dtype=torch.float32))
            sc = np.broadcast_to(np.asarray(scales, np.float32).reshape(n, -1), (n, 3))
            self.params["log_scales"].copy_(torch.log(torch.as_tensor(sc.copy()).clamp_min(1e-7)))
            op = np.clip(opacity, 1e-3, 1 - 1e-3)
            self.params["opacity_logits"].copy_(torch.as_tensor(np.log(op / (1 - op)), dtype=torch.float32))
            self.params["sh0"].copy_(torch.as_tensor(rgb_to_sh0(rgb), dtype=torch.float32)[:, None])
            if skin is not None and "skin_logits" in self.params:
                s = np.clip(skin, 1e-3, 1 - 1e-3)
                self.params["skin_logits"].copy_(torch.as_tensor(np.log(s / (1 - s)), dtype=torch.float32))


# ---- initialisers (numpy) ---------------------------------------------------------------------


def head_basis(shape3d: np.ndarray, cam_centres: np.ndarray) -> np.ndarray:
    """[3, 3] rows (right, up, front) of the head frame: front points to the mean camera, up from chin to forehead."""
    centroid = shape3d.mean(0)
    front = cam_centres.mean(0) - centroid
    front /= np.linalg.norm(front) + 1e-12
    up = shape3d[FOREHEAD] - shape3d[CHIN]
    up = up - front * (up @ front)
    up /= np.linalg.norm(up) + 1e-12
    right = np.cross(up, front)
    return np.stack([right, up, front]).astype(np.float32)


def knn_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
    """[N] sqrt of the mean squared distance to the k nearest neighbours (3DGS init)."""
    from scipy.spatial import cKDTree

    if points.shape[0] <= k:
        return np.full(points.shape[0], 1e-2, np.float32)
    d, _ = cKDTree(points).query(points, k=k + 1)
    return np.sqrt((d[:, 1:] ** 2).mean(1)).astype(np.float32)


def sample_face_surface(shape3d: np.ndarray, basis: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] points uniformly (by area) on the Delaunay triangulation of the landmarks seen from the front."""
    from scipy.spatial import Delaunay

    uv = shape3d @ basis[:2].T  # [478, 2] (right, up)
    tri = Delaunay(uv).simplices  # [T, 3]
    inner = np.isin(tri, LIPS_INNER).all(1)  # triangles spanning the mouth opening: left to the mouth branch
    tri = tri[~inner] if (~inner).any() else tri
    a, b, c = shape3d[tri[:, 0]], shape3d[tri[:, 1]], shape3d[tri[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)[..., None]  # [n, 3, 1]
    return (w[:, 0] * a[pick] + w[:, 1] * b[pick] + w[:, 2] * c[pick]).astype(np.float32)


def sample_head_shell(shape3d: np.ndarray, basis: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] points on an ellipsoid around the skull (hair, ears, back of the head), none in front of the face."""
    from scipy.spatial import Delaunay

    local = (shape3d - shape3d.mean(0)) @ basis.T  # [478, 3] (right, up, front)
    width, height = np.ptp(local[:, 0]), np.ptp(local[:, 1])
    centre = np.array([0.0, 0.12 * height, local[:, 2].max() - 0.55 * width])
    radii = np.array([0.6 * width, 0.72 * height, 0.62 * width])
    hull = Delaunay(local[:, :2])
    out = []
    while sum(len(o) for o in out) < n:
        d = rng.normal(size=(4 * n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        p = centre + d * radii * rng.uniform(0.9, 1.0, size=(4 * n, 1))
        inside_face = hull.find_simplex(p[:, :2]) >= 0
        keep = ~(inside_face & (p[:, 2] > centre[2])) & (p[:, 1] > local[:, 1].min() + 0.1 * height)
        out.append(p[keep])
    p = np.concatenate(out)[:n]
    return (p @ basis + shape3d.mean(0)).astype(np.float32)


def sample_mouth_volume(shape3d: np.ndarray, basis: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] points in a flattened ellipsoid behind the inner lip contour (teeth, tongue)."""
    lips = shape3d[list(LIPS_INNER)]  # [20, 3]
    centre = lips.mean(0)
    local = (lips - centre) @ basis.T
    mw = max(np.ptp(local[:, 0]), 1e-6)
    r = np.sqrt(rng.random(n))
    th = rng.random(n) * 2 * np.pi
    pts = np.stack([0.42 * mw * r * np.cos(th), 0.25 * mw * r * np.sin(th), -rng.uniform(0.03, 0.35, n) * mw], 1)
    return (pts @ basis + centre).astype(np.float32)


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[N, 3] camera-frame points -> [N, 2] pixels."""
    z = np.clip(points_cam[:, 2:3], 1e-6, None)
    return (points_cam[:, :2] / z) * K[[0, 1], [0, 1]] + K[:2, 2]


def sample_image(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-pixel lookup of img [H, W, ...] at uv [N, 2] (clamped to the image)."""
    h, w = img.shape[:2]
    x = np.clip(np.floor(uv[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.floor(uv[:, 1]).astype(int), 0, h - 1)
    return img[y, x]


def unproject_labels(labels: np.ndarray, rgb: np.ndarray, K: np.ndarray, depth: float, wanted: tuple[int, ...], n: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unproject n random pixels whose label is in `wanted` onto the plane z = depth.

    Returns points [n, 3] (camera frame), colours [n, 3] in [0, 1], labels [n]."""
    ys, xs = np.nonzero(np.isin(labels, wanted))
    if len(xs) == 0 or n == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.uint8)
    pick = rng.integers(0, len(xs), n)
    u = xs[pick] + rng.random(n)
    v = ys[pick] + rng.random(n)
    z = depth * (1 + 0.02 * rng.normal(size=n))
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1).astype(np.float32)
    return pts, rgb[ys[pick], xs[pick]].astype(np.float32) / 255.0, labels[ys[pick], xs[pick]]
