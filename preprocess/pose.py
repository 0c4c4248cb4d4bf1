"""Stage 3: rigid head pose per frame + one focal length, by bundle adjustment over the whole clip.

Model (OpenCV camera, avatar/core/dataset_format.py): a landmark j of frame k projects to
    u_kj = f * X / Z + cx,  v_kj = f * Y / Z + cy,  (X, Y, Z) = R_k S_j + t_k,
with a person-specific canonical shape S [478, 3] in centimetres (head frame: x right, y down,
z away from the camera, origin at the rigid points' centroid), per-frame rotation R_k (axis-angle)
and translation t_k, and one focal f shared by the clip; the principal point is the image centre.

Initialisation (no canonical face model ships in the mediapipe wheel, preprocess.md §1): MediaPipe's
per-frame 3D output (x, y, z*W) is a weak-perspective reconstruction; generalised Procrustes over
the clip on the rigid points gives a mean shape (in pixels) and per-frame similarity poses. The
shape is scaled to centimetres with the mean horizontal iris diameter 1.17 cm (MediaPipe iris docs,
"11.7 ± 0.5 mm", §3 "Metric scale"); f starts from an assumed field of view (`fov_deg`), and each
frame's depth from its Procrustes scale (t_z = f * cm_per_px / s_k).

Bundle adjustment (torch CPU, float32, one thread, L-BFGS with strong-Wolfe line search, all frames
at once): Huber loss (δ = 1 px) on the reprojection of the RIGID landmarks only (MediaPipe's own
Procrustes basis without the jaw points, plus the cheek/nose points measured most stable, §2e; mouth,
jaw, eyes, brows and the face oval are excluded, §9.7), second-difference priors on rotation and
translation (`pose_smooth_rot`, `pose_smooth_trans`, `pose_smooth_depth`: depth is ~10x less
observable than x/y, so it gets a 10x stronger prior), a prior keeping S near its initial shape, and a log-focal prior (the focal is
only weakly observable from a talking head: with a MediaPipe-derived shape the reprojection error
hardly depends on f, §3 "Pitfall"). The non-rigid points of S are then triangulated with the poses
fixed, so S holds all 478 points. Defaults follow the design note's rule: the temporal priors may raise
the reprojection error by at most ~5 % (0.674 -> 0.713 px on macron_50s_30fps).

Quality figures (see `PoseQuality`): reprojection error of the rigid points in px, rotation jitter
(mean norm of the frame-to-frame change of angular velocity, degrees/frame²) and translation jitter
(mean norm of the translation's second difference as a share of the head width, the 234↔454 span).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from avatar.core.dataset_format import CameraPose
from avatar.core.landmarks import HEAD_WIDTH_PAIR, IRIS_PAIRS

# MediaPipe's Procrustes basis (geometry_pipeline_metadata_landmarks.pbtxt, preprocess.md §2e)
# without the jaw points 136/365, plus the most stable cheek/nose points measured there.
RIGID_INDICES: tuple[int, ...] = tuple(sorted(set([
    4, 6, 10, 33, 54, 67, 117, 119, 121, 127, 129, 132, 133, 143, 147, 198, 205, 263, 284, 297, 346, 348,
    350, 356, 358, 361, 362, 372, 376, 420, 425,
    345, 47, 100, 116, 114, 277, 101, 128, 352, 329, 245, 343, 31, 330, 168, 197, 195, 5,
])))
IRIS_DIAMETER_CM = 1.17

# Acceptance thresholds (recorded in dataset.json quality; exceeding one is a warning, pose.ok=false):
# - reprojection: MediaPipe's per-landmark noise on a talking clip is ~0.7 px high-frequency std at
#   512² (§3 noise floor) and a good BA reaches 0.6-0.7 px mean (§3 table; 0.71 px measured on
#   macron_50s_30fps). 1.5 px at 512 px (scaled with the frame size) flags a failed fit (per-frame PnP
#   with a wrong shape is ~1.7 px, a lost track several px) while leaving room for harder faces.
# - jitter: both figures include the head's real accelerations. On macron_50s_30fps the fit WITHOUT
#   temporal priors gives 0.67 °/frame² and 1.8 % head width/frame² (depth noise), the default fit
#   0.34 °/frame² and 0.54 %. The limits sit between the two: a shaking fit fails, a smooth one with
#   lively head motion passes. 1 % of the head width is ~2 px/frame² on a 200 px wide face.
MAX_REPROJ_PX_AT_512 = 1.5
MAX_ROT_JITTER_DEG = 0.5
MAX_TRANS_JITTER_REL = 0.01


@dataclasses.dataclass
class PoseQuality:
    reproj_px: float
    """Mean reprojection error of the rigid landmarks (px)."""
    reproj_px_p95: float
    rot_jitter_deg: float
    """Mean |change of angular velocity| (degrees / frame²)."""
    trans_jitter_rel: float
    """Mean |second difference of t| / head width (per frame²)."""
    hf_jitter_px: float
    """Std (px) of the projected head centre minus its 5-frame centred mean (high-frequency shake)."""
    focal: float
    max_reproj_px: float
    ok: bool


# ----------------------------------------------------------------------------------------------
# small geometry helpers


def _umeyama_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity transforms dst_k ≈ s_k R_k src + c_k, batched over k.

    src [P, 3], dst [N, P, 3] -> s [N], R [N, 3, 3], c [N, 3]. (Umeyama, PAMI 1991.)
    """
    mu_s = src.mean(0)  # [3]
    mu_d = dst.mean(1)  # [N, 3]
    a = src - mu_s  # [P, 3]
    b = dst - mu_d[:, None]  # [N, P, 3]
    cov = np.einsum("npi,pj->nij", b, a) / src.shape[0]  # [N, 3, 3]
    U, D, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))  # [N]
    E = np.tile(np.eye(3), (len(d), 1, 1))
    E[:, 2, 2] = d
    R = U @ E @ Vt
    var = (a ** 2).sum(1).mean()
    s = (D * E.diagonal(axis1=1, axis2=2)).sum(1) / var
    c = mu_d - s[:, None] * np.einsum("nij,j->ni", R, mu_s)
    return s, R, c


def _rotmat_to_aa(R: np.ndarray) -> np.ndarray:
    """[N, 3, 3] -> [N, 3] axis-angle."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _aa_to_rotmat_torch(aa):
    """Rodrigues, [N, 3] -> [N, 3, 3] (safe at zero angle)."""
    import torch

    theta2 = (aa * aa).sum(-1, keepdim=True)  # [N, 1]
    theta = torch.sqrt(theta2 + 1e-24)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)  # [N, 1]
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-24))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)  # [N, 3, 3]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(Kx)
    return eye + a[..., None] * Kx + b[..., None] * (Kx @ Kx)


def initial_shape(lm2d: np.ndarray, depth: np.ndarray, rigid: np.ndarray, iters: int = 3):
    """Weak-perspective mean shape and per-frame similarity poses from MediaPipe's 3D output.

    lm2d [N, 478, 2], depth [N, 478] (pixels) -> (shape_cm [478, 3] centred on the rigid centroid,
    cm_per_px, s [N], R [N, 3, 3], c [N, 3]) with frame points ≈ s_k R_k (shape_cm / cm_per_px) + c_k.
    """
    P = np.concatenate([lm2d, depth[..., None]], -1).astype(np.float64)  # [N, 478, 3]
    n = len(P)
    ref = P[n // 2, rigid] - P[n // 2, rigid].mean(0)  # [P, 3]
    for _ in range(iters):  # generalised Procrustes: align all frames to the current mean
        s, R, c = _umeyama_batch(ref, P[:, rigid])
        # inverse-map every frame into the reference frame: X = R^T (P - c) / s
        Q = np.einsum("nji,npj->npi", R, P - c[:, None]) / s[:, None, None]  # [N, 478, 3]
        mean = np.median(Q, 0)  # [478, 3]
        ref = mean[rigid] - mean[rigid].mean(0)
    centre = mean[rigid].mean(0)
    mean = mean - centre
    iris_px = np.mean([np.linalg.norm(mean[a] - mean[b]) for a, b in IRIS_PAIRS])
    cm_per_px = IRIS_DIAMETER_CM / max(iris_px, 1e-6)
    s, R, c = _umeyama_batch(mean[rigid], P[:, rigid])
    return (mean * cm_per_px).astype(np.float64), cm_per_px, s, R, c


def rotation_jitter_deg(R: np.ndarray) -> float:
    """Mean |ω_{k+1} - ω_k| in degrees, ω_k = log(R_{k+1} R_kᵀ) (angular velocity per frame)."""
    if len(R) < 3:
        return 0.0
    from scipy.spatial.transform import Rotation

    rel = np.einsum("nij,nkj->nik", R[1:], R[:-1])  # [N-1, 3, 3] R_{k+1} R_k^T
    w = Rotation.from_matrix(rel).as_rotvec()  # [N-1, 3]
    return float(np.degrees(np.linalg.norm(np.diff(w, axis=0), axis=1).mean()))


def translation_jitter(t: np.ndarray) -> float:
    """Mean |t_{k+1} - 2 t_k + t_{k-1}| (same units as t)."""
    if len(t) < 3:
        return 0.0
    return float(np.linalg.norm(t[2:] - 2 * t[1:-1] + t[:-2], axis=1).mean())


def high_freq_jitter(p: np.ndarray, window: int = 5) -> float:
    """Std of p [N, D] minus its centred `window`-frame mean (design note §3 jitter metric (c))."""
    if len(p) < window + 2:
        return 0.0
    ker = np.ones(window) / window
    sm = np.stack([np.convolve(p[:, d], ker, mode="valid") for d in range(p.shape[1])], 1)  # [N-w+1, D]
    h = window // 2
    return float(np.linalg.norm(p[h:len(p) - h] - sm, axis=1).std())


# ----------------------------------------------------------------------------------------------


def fit_pose(lm2d: np.ndarray, depth: np.ndarray, width: int, height: int, fov_deg: float = 24.0,
             smooth_rot: float = 100.0, smooth_trans: float = 10.0, smooth_depth: float = 100.0, focal_prior_weight: float = 1.0,
             shape_prior: float = 1.0, iters: int = 100, progress: bool = True) -> tuple[CameraPose, PoseQuality]:
    """Bundle-adjust shape, poses and focal on landmarks [N, 478, 2] (+ MediaPipe depth [N, 478] px)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: thread hand-off costs more than it saves (20x here)
    try:
        return _fit_pose(lm2d, depth, width, height, fov_deg, smooth_rot, smooth_trans, smooth_depth, focal_prior_weight,
                         shape_prior, iters, progress)
    finally:
        torch.set_num_threads(threads)


def _fit_pose(lm2d, depth, width, height, fov_deg, smooth_rot, smooth_trans, smooth_depth, focal_prior_weight, shape_prior, iters,
              progress):
    import torch
    from tqdm import tqdm

    n = lm2d.shape[0]
    rigid = np.array(RIGID_INDICES)
    cx, cy = width / 2.0, height / 2.0
    f0 = 0.5 * min(width, height) / math.tan(math.radians(fov_deg) / 2)
    shape0, cm_per_px, s, R0, c = initial_shape(lm2d, depth, rigid)
    # weak perspective: s_k / cm_per_px = f / t_z
    tz = f0 * cm_per_px / s  # [N]
    txy = (c[:, :2] - np.array([cx, cy])) * tz[:, None] / f0
    t_init = np.concatenate([txy, tz[:, None]], 1)  # [N, 3]
    aa_init = _rotmat_to_aa(R0)  # [N, 3]

    dt = torch.float32
    obs = torch.as_tensor(lm2d, dtype=dt)  # [N, 478, 2]
    obs_r = obs[:, rigid]  # [N, P, 2]
    aa = torch.tensor(aa_init, dtype=dt, requires_grad=True)
    t = torch.tensor(t_init, dtype=dt, requires_grad=True)
    log_f = torch.tensor(math.log(f0), dtype=dt, requires_grad=True)
    S0 = torch.as_tensor(shape0, dtype=dt)  # [478, 3]
    S_r = S0[rigid].clone().requires_grad_(True)  # [P, 3]
    n_r = len(rigid)
    head_w = float(np.linalg.norm(shape0[HEAD_WIDTH_PAIR[0]] - shape0[HEAD_WIDTH_PAIR[1]]))

    def project(S, aa_, t_, f):  # S [P, 3] -> [N, P, 2]
        X = torch.einsum("nij,pj->npi", _aa_to_rotmat_torch(aa_), S) + t_[:, None]  # [N, P, 3]
        Z = X[..., 2:3].clamp_min(1e-3)
        return f * X[..., :2] / Z + torch.tensor([cx, cy], dtype=dt)

    def huber(r, delta=1.0):  # r [...]: residual norms
        return torch.where(r < delta, 0.5 * r ** 2, delta * (r - 0.5 * delta))

    def loss_fn():
        f = torch.exp(log_f)
        res = torch.sqrt(((project(S_r, aa, t, f) - obs_r) ** 2).sum(-1) + 1e-12)  # [N, P]
        data = huber(res).sum() / n
        d2r = aa[2:] - 2 * aa[1:-1] + aa[:-2]
        d2t = t[2:] - 2 * t[1:-1] + t[:-2]
        smooth = (smooth_rot ** 2 * (d2r ** 2).sum() + smooth_trans ** 2 * (d2t[:, :2] ** 2).sum()
                  + smooth_depth ** 2 * (d2t[:, 2] ** 2).sum()) / n
        sprior = shape_prior ** 2 * ((S_r - S0[rigid]) ** 2).sum()
        # gauge freedoms: the shape's centroid is pinned here; its scale and orientation by the shape prior
        gauge = 1e3 * (S_r.mean(0) ** 2).sum()
        fprior = focal_prior_weight * n_r * ((log_f - math.log(f0)) / 0.1) ** 2
        return data + smooth + sprior + gauge + fprior

    opt = torch.optim.LBFGS([aa, t, log_f, S_r], lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    bar = tqdm(total=int(iters * 1.25), desc="pose", unit="eval", disable=not progress, leave=False)  # LBFGS max_eval

    def closure():
        opt.zero_grad()
        L = loss_fn()
        L.backward()
        bar.update(1)
        return L

    opt.step(closure)
    bar.close()

    # non-rigid points: triangulate their shape position with the poses fixed (linear least squares)
    with torch.no_grad():
        f = torch.exp(log_f)
        Rm = _aa_to_rotmat_torch(aa).numpy()
    S_all = shape0.copy()
    S_all[rigid] = S_r.detach().numpy()
    nonrigid = np.setdiff1d(np.arange(lm2d.shape[1]), rigid)
    S_all[nonrigid] = triangulate(Rm, t.detach().numpy(), float(f), cx, cy, lm2d[:, nonrigid], shape0[nonrigid])
    S_all = torch.as_tensor(S_all)

    with torch.no_grad():
        Rm = _aa_to_rotmat_torch(aa).numpy()
        res = (project(S_r, aa, t, f) - obs_r).norm(dim=-1).numpy()  # [N, P]
    t_np = t.detach().numpy()
    focal = float(f)
    max_reproj = MAX_REPROJ_PX_AT_512 * min(width, height) / 512.0
    rj = rotation_jitter_deg(Rm)
    tj = translation_jitter(t_np) / max(head_w, 1e-6)
    q = PoseQuality(reproj_px=float(res.mean()), reproj_px_p95=float(np.percentile(res, 95)), rot_jitter_deg=rj,
                    trans_jitter_rel=tj, hf_jitter_px=high_freq_jitter(focal * t_np[:, :2] / t_np[:, 2:3]), focal=focal, max_reproj_px=max_reproj,
                    ok=bool(res.mean() <= max_reproj and rj <= MAX_ROT_JITTER_DEG and tj <= MAX_TRANS_JITTER_REL))
    cam = CameraPose(R=Rm.astype(np.float32), t=t_np.astype(np.float32), focal=focal, cx=float(cx), cy=float(cy),
                     shape3d=S_all.numpy().astype(np.float32))
    return cam, q


def triangulate(R: np.ndarray, t: np.ndarray, f: float, cx: float, cy: float, uv: np.ndarray, prior: np.ndarray,
                prior_weight: float = 1e-3) -> np.ndarray:
    """Head-frame positions [P, 3] of points seen at uv [N, P, 2] by known cameras (R [N,3,3], t [N,3]).

    Linear (algebraic) least squares: (u - cx)(r3·S + t3) = f (r1·S + t1), same for v, summed over
    frames, with a tiny pull toward `prior` [P, 3] so points that never move in depth stay defined.
    """
    R, t, uv = (np.asarray(a, np.float64) for a in (R, t, uv))
    du = uv[..., 0] - cx  # [N, P]
    dv = uv[..., 1] - cy
    A_u = du[..., None] * R[:, None, 2, :] - f * R[:, None, 0, :]  # [N, P, 3]
    A_v = dv[..., None] * R[:, None, 2, :] - f * R[:, None, 1, :]
    b_u = f * t[:, None, 0] - du * t[:, None, 2]  # [N, P]
    b_v = f * t[:, None, 1] - dv * t[:, None, 2]
    AtA = np.einsum("npi,npj->pij", A_u, A_u) + np.einsum("npi,npj->pij", A_v, A_v)  # [P, 3, 3]
    Atb = np.einsum("npi,np->pi", A_u, b_u) + np.einsum("npi,np->pi", A_v, b_v)  # [P, 3]
    lam = prior_weight * np.trace(AtA, axis1=1, axis2=2)[:, None, None] / 3
    AtA = AtA + lam * np.eye(3)
    Atb = Atb + lam[..., 0] * prior
    return np.linalg.solve(AtA, Atb[..., None])[..., 0]


def project_points(cam: CameraPose, k: int, pts: np.ndarray) -> np.ndarray:
    """Project head-frame points [P, 3] with frame k's pose -> [P, 2] pixels."""
    X = pts @ cam.R[k].T + cam.t[k]
    return cam.focal * X[:, :2] / X[:, 2:3] + np.array([cam.cx, cam.cy], np.float32)
