"""`avatar export RUN`: the trained avatar as a standard 3D Gaussian-splatting .ply, and its motion.

    avatar export runs/NAME --ply avatar.ply              canonical (neutral) Gaussians, head frame
    avatar export runs/NAME --ply head.ply --parts head,mouth
    avatar export runs/NAME --motion train_motion.npz     training head poses + blinks (+ learned stats)

The .ply uses the layout of the original 3DGS code (graphdeco-inria/gaussian-splatting,
scene/gaussian_model.py `save_ply`): x y z, nx ny nz (zeros), f_dc_0..2, f_rest_* (channel-major),
opacity (logit), scale_0..2 (log), rot_0..3 (wxyz), so any 3DGS viewer opens it. It holds the
canonical Gaussians without audio/blink deformation, in the head frame (the torso, which lives in a
reference camera frame, is moved into the head frame of that reference pose).
The motion .npz (`head` [N,4,4] head->camera poses, `blink` [N], `fps`) plugs into
`avatar speak --pose FILE --blink FILE`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from avatar.errors import AvatarError

DESCRIPTION = __doc__.split("\n", 2)[2]
PARTS = ("head", "mouth", "torso")


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="trained run folder (output of `avatar fit`)")
    p.add_argument("--ply", default=None, metavar="FILE.ply", help="write the canonical Gaussians as a standard 3DGS .ply")
    p.add_argument("--parts", default="head,mouth,torso",
                   help="comma-separated Gaussian sets to include in the .ply: head, mouth, torso (default all)")
    p.add_argument("--motion", default=None, metavar="FILE.npz",
                   help="write the training clip's head poses and blinks (+ learned blink statistics) as .npz")
    p.set_defaults(func=run)
    return p


def gaussian_arrays(avatar, parts: tuple[str, ...] = PARTS) -> dict[str, np.ndarray]:
    """Raw 3DGS arrays of the chosen sets in the head frame: means [N,3], quats [N,4] wxyz (normalised),
    log_scales [N,3], opacity_logits [N], sh [N,K,3]."""
    import torch

    from avatar.model.geometry import matrix_to_quat, quat_multiply

    m = avatar.model
    sets = m.sets() if callable(m.sets) else m.sets
    out: dict[str, list] = {k: [] for k in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    with torch.no_grad():
        for name in parts:
            if name not in sets:
                raise AvatarError(f"--parts: unknown set '{name}' (choose from {', '.join(PARTS)})")
            g = sets[name]
            if len(g) == 0:
                continue
            x = g.params["means"].float()
            q = torch.nn.functional.normalize(g.params["quats"].float(), dim=-1)
            if name == "torso":  # reference camera frame -> head frame of the reference pose
                ref = m.ref_viewmat.float()
                Rt = ref[:3, :3].T
                x = (x - ref[:3, 3]) @ Rt.T
                q = quat_multiply(matrix_to_quat(Rt)[None], q)
            out["means"].append(x)
            out["quats"].append(q)
            out["log_scales"].append(g.params["log_scales"].float())
            out["opacity_logits"].append(g.params["opacity_logits"].float())
            out["sh"].append(g.sh.float())
    if not out["means"]:
        raise AvatarError("no Gaussians to export (the chosen --parts are empty)")
    return {k: torch.cat(v).detach().cpu().numpy() for k, v in out.items()}


def write_ply(path: str | Path, g: dict[str, np.ndarray]) -> Path:
    """Write 3DGS arrays (see `gaussian_arrays`) as a binary .ply (atomic)."""
    from plyfile import PlyData, PlyElement

    from avatar.core.io import atomic_path

    n = g["means"].shape[0]
    sh = g["sh"]  # [N, K, 3]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS saves features_rest
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(rest.shape[1])]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    cols = np.concatenate([g["means"], np.zeros((n, 3), np.float32), sh[:, 0, :], rest, g["opacity_logits"][:, None],
                           g["log_scales"], g["quats"]], axis=1).astype(np.float32)
    arr = np.empty(n, dtype=[(nm, "f4") for nm in names])
    for i, nm in enumerate(names):
        arr[nm] = cols[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp))
    return Path(path)


def run(args: argparse.Namespace) -> int:
    if args.ply is None and args.motion is None:
        raise AvatarError("nothing to export: give --ply FILE.ply and/or --motion FILE.npz")
    from avatar.engine.runtime import Avatar

    avatar = Avatar.load(args.run, device="cpu")
    if args.ply:
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        g = gaussian_arrays(avatar, parts)
        write_ply(args.ply, g)
        print(f"avatar export: wrote {args.ply} ({g['means'].shape[0]} Gaussians, SH degree "
              f"{int(round(np.sqrt(g['sh'].shape[1]))) - 1})", file=sys.stderr)
    if args.motion:
        from avatar.core.io import save_npz_atomic
        from avatar.engine.blink import BlinkModel

        head = avatar.train_viewmats.cpu().numpy().astype(np.float32)
        blink = avatar.train_blink.cpu().numpy().astype(np.float32)
        bm = BlinkModel.fit(blink, avatar.fps)
        meta = {"source": "training clip", "run": str(args.run), "blink_model": bm.to_dict()}
        save_npz_atomic(args.motion, head=head, blink=blink, fps=np.float32(avatar.fps), config=np.array(json.dumps(meta)))
        print(f"avatar export: wrote {args.motion} ({len(head)} frames of head pose and blink)", file=sys.stderr)
    return 0
