"""`AvatarModel`: canonical Gaussians (head, mouth interior, torso) + audio/blink/pose-driven deformation.

Per frame k with head pose P_k = [R_k | t_k] (pose.npz, head frame -> OpenCV camera):
  head   x = μ + Δμ(h(μ), a_k ⊙ w_a(μ), blink_k · w_e(μ)); q, s deformed likewise      (TalkingGaussian §3.2)
  mouth  x = μ + Δμ_mouth(h(μ), a_k), mostly along the head's up axis                 (TalkingGaussian §3.3)
  head and mouth are then posed rigidly: X_cam = R_k x + t_k
  torso  Gaussians live in the camera frame of a reference pose P_ref; each blends "static" and
         "moves rigidly with the head" (P_k P_ref^-1) by a learned skinning weight, plus a small
         pose-conditioned residual — the neck follows the head without a seam.
All sets are rasterised together (depth-sorted), so the mouth interior is naturally hidden behind
the lips; the render is composited over the background plate with the rendered alpha.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
import torch.nn as nn

from avatar.core.dataset_format import MASK_LABELS, PERSON_LABELS
from avatar.model.audio import AudioEncoder
from avatar.model.config import ModelConfig
from avatar.model.deform import FaceDeformer, MouthDeformer, TorsoDeformer, _InferenceCache
from avatar.model.gaussians import (GaussianSet, head_basis, knn_scale, project, sample_face_surface, sample_head_shell,
                                    sample_image, sample_mouth_volume, unproject_labels)
from avatar.core.landmarks import LOWER_INNER_LIP, UPPER_INNER_LIP
from avatar.model.geometry import axis_angle_from_matrix, matrix_to_quat, quat_multiply

SET_NAMES = ("head", "mouth", "torso")
_PERSON_IDS = tuple(MASK_LABELS[n] for n in PERSON_LABELS)



def over_background(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Premultiplied `rgb` [B, H, W, 3] with `alpha` [B, H, W, 1] over a background colour [3], image
    [H, W, 3] or batch [B, H, W, 3]."""
    bg = background
    if bg.dim() == 1:
        bg = bg.view(1, 1, 1, 3)
    elif bg.dim() == 3:
        bg = bg[None]
    return rgb + (1 - alpha) * bg

class AvatarModel(nn.Module):
    """All learnable parts of one person's avatar. Build with `from_data` (training) or
    `from_state` (a saved state dict, whose Gaussian counts may differ after densification)."""

    def __init__(self, cfg: ModelConfig, feat_dim: int, counts: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.feat_dim = feat_dim
        self.head = GaussianSet(counts["head"], cfg.sh_degree)
        self.mouth = GaussianSet(counts["mouth"], cfg.sh_degree)
        self.torso = GaussianSet(counts.get("torso", 0), cfg.sh_degree, skinned=True)
        self.audio = AudioEncoder(feat_dim, cfg.audio_dim, cfg.audio_window, cfg.att_window, cfg.audio_lookahead)
        self.face_motion = FaceDeformer(cfg.audio_dim, cfg.grid_levels, cfg.grid_base_res, cfg.grid_max_res,
                                        cfg.grid_log2_table, cfg.motion_hidden)
        self.mouth_motion = MouthDeformer(cfg.audio_dim)
        self.torso_motion = TorsoDeformer()
        self.register_buffer("unit", torch.tensor(1.0))  # face size (largest landmark extent), head-frame units
        self.register_buffer("center", torch.zeros(3))  # centre of the motion-field box (head frame)
        self.register_buffer("bound", torch.tensor(1.0))  # half size of that box
        self.register_buffer("basis", torch.eye(3))  # rows: right, up, front of the head frame
        self.register_buffer("ref_viewmat", torch.eye(4))  # pose whose camera frame holds the torso
        self.register_buffer("torso_center", torch.zeros(3))  # camera frame of the reference pose
        # torso track (avatar/core/torso.py): the reference frame's measured shift, and the linear map head pose ->
        # shift for frames without a measurement (zeros: a model trained before the track, the torso unshifted)
        self.register_buffer("torso_shift_ref", torch.zeros(2))
        self.register_buffer("torso_coef", torch.zeros(13, 2))
        self.register_buffer("torso_tracked", torch.tensor(0.0))  # 1: trained with the track (else shifts are ignored)
        self._static_memo: dict[str, _InferenceCache] = {}

    def static(self, name: str, compute: Callable[[], torch.Tensor]):
        """`compute()` for a term that is the same in every frame (concatenated SH, activated opacities and
        scales, normalised quaternions, the torso's reference frame), memoised at inference under the rules of
        the deformers' hash features (avatar/model/deform.py `_InferenceCache`: only with autograd off and while
        no parameter or buffer of the model changed), so a frame gets bit for bit the uncached values. Together
        with the head box's partial selection (avatar/engine/composite.py `tail_quantile`) a one-frame render of
        the bench fixture at 128 px went from 44 to 32 ms on 2 cores."""
        memo = self._static_memo.get(name)
        if memo is None:
            memo = self._static_memo[name] = _InferenceCache()
        return memo.get_static(self, compute)

    # ---- construction -------------------------------------------------------------------------

    def sets(self) -> dict[str, GaussianSet]:
        return {"head": self.head, "mouth": self.mouth, "torso": self.torso}

    @classmethod
    def from_state(cls, cfg: ModelConfig, feat_dim: int, state: dict[str, torch.Tensor]) -> "AvatarModel":
        counts = {n: int(state[f"{n}.params.means"].shape[0]) for n in SET_NAMES}
        model = cls(cfg, feat_dim, counts)
        # runs saved before the torso track: no shift, exactly as they were trained
        state = {**{k: v for k, v in model.state_dict().items() if k in ("torso_shift_ref", "torso_coef", "torso_tracked")},
                 **state}
        model.load_state_dict(state)
        return model

    @classmethod
    def from_data(cls, cfg: ModelConfig, *, shape3d: np.ndarray, viewmats: np.ndarray, K: np.ndarray,
                  frame: Callable[[int], tuple[np.ndarray, np.ndarray]], landmarks: np.ndarray, train_idx: np.ndarray,
                  train_feats: np.ndarray, seed: int = 0, torso_track: np.ndarray | None = None) -> "AvatarModel":
        """Initialise from the dataset (see gaussians.py for the reasoning).

        shape3d [478, 3]; viewmats [N, 4, 4] all frames; K [3, 3] at the training resolution;
        frame(k) -> (rgb uint8 [H, W, 3], labels uint8 [H, W]) at the training resolution;
        landmarks [N, 478, 2] (any resolution, only ratios are used); train_feats [M, D]."""
        rng = np.random.default_rng(seed)
        shape3d = np.asarray(shape3d, np.float64)
        R, t = viewmats[:, :3, :3].astype(np.float64), viewmats[:, :3, 3].astype(np.float64)
        cams = -np.einsum("nji,nj->ni", R[train_idx], t[train_idx])  # camera centres in the head frame
        basis = head_basis(shape3d, cams)
        unit = float(np.ptp(shape3d, axis=0).max())

        # Reference frame: the training frame whose rotation is closest to the mean rotation.
        rmean = R[train_idx].mean(0)
        ref = int(train_idx[np.argmin(np.linalg.norm(R[train_idx] - rmean, axis=(1, 2)))])
        rgb_ref, lab_ref = frame(ref)

        def colours(points_head: np.ndarray, k: int, rgb: np.ndarray, lab: np.ndarray):
            cam = points_head @ R[k].T + t[k]
            uv = project(cam, K)
            return sample_image(rgb, uv).astype(np.float32) / 255.0, np.isin(sample_image(lab, uv), _PERSON_IDS)

        # Head: face surface + shell.
        face = sample_face_surface(shape3d, basis, cfg.face_points, rng)
        shell = sample_head_shell(shape3d, basis, cfg.shell_points, rng)
        head = np.concatenate([face, shell])
        col, on_person = colours(head, ref, rgb_ref, lab_ref)
        op = np.where(on_person, cfg.init_opacity, 0.1)

        # Mouth interior: colours from the frame with the widest inner-lip opening.
        lm = np.asarray(landmarks)
        gap = np.linalg.norm(lm[train_idx, UPPER_INNER_LIP] - lm[train_idx, LOWER_INNER_LIP], axis=-1)
        k_open = int(train_idx[int(np.argmax(gap))])
        mouth = sample_mouth_volume(shape3d, basis, cfg.mouth_points, rng)
        rgb_o, lab_o = frame(k_open)
        mcol, _ = colours(mouth, k_open, rgb_o, lab_o)
        in_mouth = sample_image(lab_o, project(mouth @ R[k_open].T + t[k_open], K)) == MASK_LABELS["mouth"]
        mcol = np.where(in_mouth[:, None], mcol, np.array([0.35, 0.12, 0.12], np.float32))

        # Torso: neck/torso pixels of the reference frame on the plane of the head centre's depth.
        centre_cam = shape3d.mean(0) @ R[ref].T + t[ref]
        n_torso = cfg.torso_points if cfg.torso else 0
        tpts, tcol, tlab = unproject_labels(lab_ref, rgb_ref, K, float(centre_cam[2]) + 0.15 * unit,
                                            (MASK_LABELS["neck"], MASK_LABELS["torso"]), n_torso, rng)
        skin = np.where(tlab == MASK_LABELS["neck"], 0.5, 0.02)

        model = cls(cfg, train_feats.shape[1], {"head": len(head), "mouth": len(mouth), "torso": len(tpts)})
        model.head.set_from(head, knn_scale(head), col, op)
        model.mouth.set_from(mouth, knn_scale(mouth), mcol, np.full(len(mouth), 0.5))
        if len(tpts):
            model.torso.set_from(tpts, knn_scale(tpts), tcol, np.full(len(tpts), 0.7), skin)
        lo, hi = head.min(0), head.max(0)
        with torch.no_grad():
            model.unit.fill_(unit)
            model.center.copy_(torch.as_tensor((lo + hi) / 2, dtype=torch.float32))
            model.bound.fill_(float((hi - lo).max() / 2 * 1.2))
            model.basis.copy_(torch.as_tensor(basis))
            model.ref_viewmat.copy_(torch.as_tensor(viewmats[ref], dtype=torch.float32))
            model.torso_center.copy_(torch.as_tensor(centre_cam, dtype=torch.float32))
            if torso_track is not None and len(tpts):  # avatar/core/torso.py: measured shifts [N, 2]
                from avatar.core.torso import fit_shift_predictor

                tt = np.asarray(torso_track, np.float64)
                model.torso_shift_ref.copy_(torch.as_tensor(tt[ref], dtype=torch.float32))
                model.torso_coef.copy_(torch.as_tensor(fit_shift_predictor(viewmats[train_idx], tt[train_idx], unit)))
                model.torso_tracked.fill_(1.0)
            model.audio.set_normalisation(torch.as_tensor(np.asarray(train_feats), dtype=torch.float32))
        return model

    # ---- deformation ----------------------------------------------------------------------------

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Canonical positions -> the motion-field box [-1, 1]^3. Detached: the field is sampled at the
        Gaussians, it does not move them (saves the backward through the grid interpolation weights)."""
        return ((x.detach() - self.center) / self.bound).clamp(-1, 1)

    def deform(self, audio: torch.Tensor | None, blink: torch.Tensor, lip_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Canonical head/mouth Gaussians -> deformed head-frame Gaussians for B frames.

        audio: [B, A] codes or None (static: no deformation, used during warm-up); blink [B].
        Returns means [B, N, 3], quats [B, N, 4], log_scales [B, N, 3] (head then mouth) and the raw offsets."""
        cfg = self.cfg
        hp, mp = self.head.params, self.mouth.params
        b = blink.shape[0]
        q_head = self.static("q_head", lambda: torch.nn.functional.normalize(hp["quats"], dim=-1))
        q_mouth = self.static("q_mouth", lambda: torch.nn.functional.normalize(mp["quats"], dim=-1))
        if audio is None:
            means = self.static("hm_means", lambda: torch.cat([hp["means"], mp["means"]]))[None].expand(b, -1, -1)
            quats = self.static("hm_quats", lambda: torch.cat([q_head, q_mouth]))[None].expand(b, -1, -1)
            log_scales = self.static("hm_log_scales", lambda: torch.cat([hp["log_scales"], mp["log_scales"]]))
            return {"means": means, "quats": quats, "log_scales": log_scales[None].expand(b, -1, -1)}
        xh = self.static("head_xn", lambda: self._normalised(hp["means"]))
        xm = self.static("mouth_xn", lambda: self._normalised(mp["means"]))
        fo = self.face_motion(xh, audio, blink)
        mo = self.mouth_motion(xm, audio)  # [B, M, 3]
        if lip_scale != 1.0:  # scale only the audio-driven part: Δ(0) + s (Δ(a) - Δ(0))
            f0 = self.face_motion(xh, torch.zeros_like(audio), blink)
            m0 = self.mouth_motion(xm, torch.zeros_like(audio))
            for k in ("d_xyz", "d_rot", "d_scale"):
                fo[k] = f0[k] + lip_scale * (fo[k] - f0[k])
            mo = m0 + lip_scale * (mo - m0)
        s = cfg.motion_scale * self.unit
        head_means = hp["means"][None] + s * fo["d_xyz"]  # [B, N, 3]
        head_quats = torch.nn.functional.normalize(q_head[None] + fo["d_rot"], dim=-1)
        head_ls = hp["log_scales"][None] + fo["d_scale"]
        off = mo[..., 0:1] * self.basis[1] + mo[..., 1:2] * self.basis[0] + mo[..., 2:3] * self.basis[2]  # [B, M, 3]
        mouth_means = mp["means"][None] + cfg.mouth_motion_scale * self.unit * off
        return {
            "means": torch.cat([head_means, mouth_means], 1),
            "quats": torch.cat([head_quats, q_mouth[None].expand(b, -1, -1)], 1),
            "log_scales": torch.cat([head_ls, mp["log_scales"][None].expand(b, -1, -1)], 1),
            "d_xyz": fo["d_xyz"], "d_rot": fo["d_rot"], "d_scale": fo["d_scale"], "d_mouth": mo,
            "w_a": fo["w_a"], "w_e": fo["w_e"],
        }

    def point_motion(self, points: torch.Tensor, audio: torch.Tensor, blink: torch.Tensor,
                     mouth_points: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Move arbitrary canonical head-frame points with the motion fields (no Gaussians involved).

        points [L, 3] through the face field (as a head Gaussian at that place would move),
        mouth_points [M, 3] through the mouth-interior branch; audio [B, A] codes, blink [B].
        Returns deformed head-frame positions [B, L, 3] and [B, M, 3] (or None). Used by the landmark
        motion loss (avatar/train/trainer.py): the fields are sampled at the canonical landmarks and
        must land on the tracked landmarks of that frame."""
        fo = self.face_motion(self._normalised(points), audio, blink)
        x = points[None] + self.cfg.motion_scale * self.unit * fo["d_xyz"]
        xm = None
        if mouth_points is not None:
            mo = self.mouth_motion(self._normalised(mouth_points), audio)  # [B, M, 3] (up, right, front)
            off = mo[..., 0:1] * self.basis[1] + mo[..., 1:2] * self.basis[0] + mo[..., 2:3] * self.basis[2]
            xm = mouth_points[None] + self.cfg.mouth_motion_scale * self.unit * off
        return x, xm

    def torso_shift(self, viewmat: torch.Tensor) -> torch.Tensor:
        """[2] the torso shift (avatar/core/torso.py: image shift / focal, relative to the dataset's first frame)
        predicted from head pose `viewmat` [4, 4] by the stored linear map; what a frame without a measured
        shift (`avatar speak`, serve, the viewer) gets."""
        v = viewmat.to(self.torso_coef.dtype)
        x = torch.cat([v[:3, :3].reshape(9), v[:3, 3] / self.unit, v.new_ones(1)])
        return x @ self.torso_coef

    def torso_gaussians(self, viewmat: torch.Tensor, deform: bool = True,
                        camera: torch.Tensor | None = None, shift: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Torso means [T, 3] and quats [T, 4] in the camera frame for head pose `viewmat` [4, 4].

        `shift` [2]: the frame's measured torso shift (avatar/core/torso.py; None: `torso_shift(viewmat)`). The
        static part of the torso (weight 1 - skin) moves in the image by (shift - the reference frame's shift)
        times the focal length: each Gaussian by that angle times its own depth, so the whole torso layer
        slides in the image as the measured torso did.
        `camera` [4, 4] (optional): a free-view camera move (training-camera frame -> new camera frame)
        applied rigidly after the skinning, which is always computed in the training-camera frame."""
        tp = self.torso.params
        x = tp["means"]
        q = self.static("torso_quats", lambda: torch.nn.functional.normalize(tp["quats"], dim=-1))
        if len(self.torso) == 0:
            return x, q
        M = viewmat @ self.static("ref_inv", lambda: torch.linalg.inv(self.ref_viewmat))  # [4, 4] reference -> current camera
        w = self.static("torso_skin", lambda: torch.sigmoid(tp["skin_logits"])[:, None])  # [T, 1]
        x_follow = x @ M[:3, :3].T + M[:3, 3]
        qm = matrix_to_quat(M[:3, :3])
        q_follow = quat_multiply(qm[None], q)
        d = (self.torso_shift(viewmat) if shift is None else shift.to(x.dtype)) - self.torso_shift_ref  # [2]
        d = d * self.torso_tracked  # a model trained without the track: no shift, bit for bit as before
        x_static = x + torch.cat([d, d.new_zeros(1)])[None] * x[:, 2:3]  # image shift d * focal at every depth
        xs = (1 - w) * x_static + w * x_follow
        if deform:
            pose = torch.cat([axis_angle_from_matrix(M[:3, :3]), M[:3, 3] / self.unit])[None]  # [1, 6]
            xn = self.static("torso_xn", lambda: (x - self.torso_center) / (3 * self.unit))
            xs = xs + self.cfg.torso_motion_scale * self.unit * self.torso_motion(xn, pose)[0]
        qs = torch.nn.functional.normalize((1 - w) * q + w * q_follow, dim=-1)
        if camera is not None:
            xs = xs @ camera[:3, :3].T + camera[:3, 3]
            qs = quat_multiply(matrix_to_quat(camera[:3, :3])[None], qs)
        return xs, qs

    # ---- rendering ------------------------------------------------------------------------------

    def render(self, viewmats: torch.Tensor, feats: torch.Tensor | None, blink: torch.Tensor, K: torch.Tensor,
               width: int, height: int, background: torch.Tensor | None = None, *, deform: bool = True,
               lip_scale: float = 1.0, torso: bool = True, sh_degree: int | None = None,
               retain_means2d: bool = False, backend: str = "auto", cameras: torch.Tensor | None = None,
               parts: Literal["all", "head", "body"] = "all", torso_shift: torch.Tensor | None = None) -> dict:
        """Render B frames.

        viewmats [B, 4, 4] head->camera; feats [B, W, D] raw feature windows (None = static);
        blink [B]; K [3, 3] or one per frame [B, 3, 3] (the head crops of avatar/engine/composite.py);
        background None (black, premultiplied), [3], [H, W, 3] or [B, H, W, 3].
        parts: "all" (every set, depth-sorted together), "head" (head + mouth interior only: the head layer)
        or "body" (torso only, no audio network run: the body layer); see avatar/engine/composite.py.
        torso_shift [B, 2] (optional): measured torso shifts (`torso_gaussians`); None predicts them from the pose.
        cameras [B, 4, 4] (optional): free-view camera moves, training-camera frame -> new camera frame
        (None, or a frame whose matrix is exactly the identity, renders from the training camera bit for
        bit). Head and mouth are posed with cameras[i] @ viewmats[i]; the torso is built from the head
        pose viewmats[i] in the training-camera frame as always (its skinning blends "static in that
        frame" and "follows the head") and then moved rigidly by cameras[i], so head, neck and torso stay
        one body seen from the new viewpoint. The background is composited as given (the runtime
        re-projects the plate for the camera).
        Returns rgb [B, H, W, 3], alpha [B, H, W, 1], means2d (list of [1, N, 2] autograd tensors),
        radii (list of [1, N, 2]) and the deformation outputs under "deform"."""
        from cuda_ext import rasterize, spherical_harmonics

        b = viewmats.shape[0]
        with_head = parts in ("all", "head")
        audio = self.audio(feats) if (deform and feats is not None and with_head) else None
        d = self.deform(audio, blink, lip_scale) if with_head else {}
        deg = self.cfg.sh_degree if sh_degree is None else min(sh_degree, self.cfg.sh_degree)
        nb = (deg + 1) ** 2
        if with_head:
            hm_sh = self.static(f"hm_sh{nb}", lambda: torch.cat([self.head.sh, self.mouth.sh])[:, :nb])  # [N, K, 3]
            hm_op = self.static("hm_op", lambda: torch.cat([self.head.opacities, self.mouth.opacities]))
        use_torso = torso and self.cfg.torso and len(self.torso) > 0 and parts in ("all", "body")
        eye = torch.eye(4, device=viewmats.device)[None]
        Ks = K[None].expand(b, 3, 3) if K.dim() == 2 else K  # [B, 3, 3]
        rgbs, alphas, m2d, radii = [], [], [], []
        for i in range(b):
            cam = None if cameras is None or torch.equal(cameras[i], eye[0]) else cameras[i]
            V = viewmats[i] if cam is None else cam @ viewmats[i]  # head -> (new) camera
            Rk, tk = V[:3, :3], V[:3, 3]
            xs, qs, ss, ops, colss = [], [], [], [], []
            if with_head:
                x = d["means"][i] @ Rk.T + tk  # [N, 3] camera frame
                xs.append(x)
                qs.append(quat_multiply(matrix_to_quat(Rk)[None], d["quats"][i]))
                ss.append(torch.exp(d["log_scales"][i]))
                dirs = torch.nn.functional.normalize(x, dim=-1) @ Rk  # view directions in the head frame
                colss.append(spherical_harmonics(deg, dirs, hm_sh))
                ops.append(hm_op)
            if use_torso:
                tx, tq = self.torso_gaussians(viewmats[i], deform=deform, camera=cam,
                                              shift=None if torso_shift is None else torso_shift[i])
                xs.append(tx)
                qs.append(tq)
                ss.append(self.static("torso_scales", lambda: self.torso.scales))
                ops.append(self.static("torso_op", lambda: self.torso.opacities))
                tdirs = torch.nn.functional.normalize(tx, dim=-1)  # torso SH live in the training-camera frame
                if cam is not None:
                    tdirs = tdirs @ cam[:3, :3]
                colss.append(spherical_harmonics(deg, tdirs, self.static(f"torso_sh{nb}", lambda: self.torso.sh[:, :nb])))
            if not xs:  # nothing to draw (body layer without a torso)
                z = torch.zeros(height, width, 1, device=viewmats.device)
                rgbs.append(z.expand(height, width, 3))
                alphas.append(z)
                m2d.append(None)
                radii.append(None)
                continue
            cat = torch.cat if len(xs) > 1 else (lambda ts: ts[0])  # one set (a layer): nothing to join
            x, q, s, op = cat(xs), cat(qs), cat(ss), cat(ops)
            cols = (cat(colss) + 0.5).clamp_min(0.0)
            out = rasterize(x, q, s, op, cols, eye, Ks[i][None], width, height, render_depth=False, backend=backend)
            if retain_means2d and out.means2d.requires_grad:
                out.means2d.retain_grad()
            rgbs.append(out.image[0])
            alphas.append(out.alpha[0])
            m2d.append(out.means2d)
            radii.append(out.radii)
        rgb = torch.stack(rgbs)  # [B, H, W, 3] premultiplied
        alpha = torch.stack(alphas)  # [B, H, W, 1]
        if background is not None:
            rgb = over_background(rgb, alpha, background)
        return {"rgb": rgb, "alpha": alpha, "means2d": m2d, "radii": radii, "deform": d,
                "counts": (len(self.head) if with_head else 0, len(self.mouth) if with_head else 0,
                           len(self.torso) if use_torso else 0)}
