"""Adaptive density control as a strategy object with its own state.

After each backward pass `step_post_backward` accumulates the screen-space position gradient norm
of every visible Gaussian (the `means2d` returned by the rasterizer, converted to NDC units as in
gsplat's DefaultStrategy); every `refine_every` steps between `refine_start` and `refine_stop` it
clones small Gaussians with a large mean gradient, splits large ones into 2 children sampled from
the parent (scale / 1.6), and prunes transparent or oversized ones — 3D Gaussian Splatting
(Kerbl et al. 2023, §5) with TalkingGaussian's rising opacity floor and no opacity reset
(design/model.md §4.4). Each Gaussian set (head, mouth, torso) is refined separately; optimizer
moments follow the parameters (zeros for new Gaussians).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from avatar.model.geometry import quat_to_matrix
from avatar.train.config import StrategyConfig

MIN_GAUSSIANS = 64  # never prune a set below this


def _update_set(gset, optimizer: torch.optim.Optimizer, fn_param: Callable[[str, torch.Tensor], torch.Tensor],
                fn_state: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Replace every parameter of `gset` by fn_param(name, p) and remap its Adam moments with fn_state."""
    for name in list(gset.params.keys()):
        p = gset.params[name]
        new_p = nn.Parameter(fn_param(name, p.data))
        for group in optimizer.param_groups:
            if group["params"] and group["params"][0] is p:
                st = optimizer.state.pop(p, None)
                if st:
                    st = {k: (fn_state(name, v) if torch.is_tensor(v) and v.shape == p.shape else v) for k, v in st.items()}
                    optimizer.state[new_p] = st
                group["params"] = [new_p]
        gset.params[name] = new_p


class DensifyStrategy:
    """Clone / split / prune (see module docstring). State: per set grad accumulators and counts."""

    def __init__(self, cfg: StrategyConfig, unit: float, total_iters: int):
        self.cfg, self.unit, self.total_iters = cfg, float(unit), total_iters
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.history: list[dict[str, int]] = []

    def state_dict(self) -> dict:
        return {"state": {k: {n: t.clone() for n, t in v.items()} for k, v in self.state.items()}, "history": list(self.history)}

    def load_state_dict(self, d: dict) -> None:
        self.state = d["state"]
        self.history = list(d.get("history", []))

    def _reset(self, name: str, n: int, device) -> None:
        self.state[name] = {"grad2d": torch.zeros(n, device=device), "count": torch.zeros(n, device=device)}

    def step_post_backward(self, sets: dict, optimizer: torch.optim.Optimizer, out: dict, step: int,
                           width: int, height: int) -> dict[str, int] | None:
        """Accumulate statistics from `out` (model.render output after backward) and refine when due."""
        cfg = self.cfg
        if step >= cfg.refine_stop:
            return None
        # one entry per rendered pass (avatar/engine/composite.py: the body and head-crop layers); each has
        # its own image size and covers its own sets
        passes = out.get("passes") or [{"means2d": out["means2d"], "radii": out["radii"], "counts": out["counts"],
                                         "width": width, "height": height}]
        items = [(m, r, p["counts"], p["width"], p["height"]) for p in passes for m, r in zip(p["means2d"], p["radii"])]
        for m2d, radii, counts, pw, ph in items:
            if m2d is None or m2d.grad is None:
                continue
            g = m2d.grad[0].clone()  # [N, 2] pixels
            g[:, 0] *= pw / 2.0
            g[:, 1] *= ph / 2.0
            norm = g.norm(dim=-1)  # [N]
            vis = (radii[0] > 0).any(-1)  # [N]
            start = 0
            for name, n in zip(("head", "mouth", "torso"), counts):
                gset = sets[name]
                if name not in self.state or self.state[name]["count"].shape[0] != len(gset):
                    self._reset(name, len(gset), norm.device)
                if n:
                    st = self.state[name]
                    st["grad2d"] += torch.where(vis[start:start + n], norm[start:start + n], 0.0)
                    st["count"] += vis[start:start + n].float()
                start += n
        if step < cfg.refine_start or step % cfg.refine_every != 0:
            return None
        return self.refine(sets, optimizer, step)

    @torch.no_grad()
    def refine(self, sets: dict, optimizer: torch.optim.Optimizer, step: int) -> dict[str, int]:
        cfg = self.cfg
        total = sum(len(s) for s in sets.values())
        budget = max(0, cfg.max_gaussians - total)
        report = {"step": step, "cloned": 0, "split": 0, "pruned": 0}
        frac = min(1.0, max(0.0, (step - cfg.refine_start) / max(1, cfg.refine_stop - cfg.refine_start)))
        op_floor = cfg.prune_opacity * (1 + frac)
        for name, gset in sets.items():
            n = len(gset)
            if n == 0 or name not in self.state:
                continue
            st = self.state[name]
            avg = st["grad2d"] / st["count"].clamp_min(1)
            is_grad = avg > cfg.grad_threshold
            max_scale = torch.exp(gset.params["log_scales"]).max(-1).values
            small = max_scale <= cfg.split_scale * self.unit
            clone, split = is_grad & small, is_grad & ~small
            # Respect the global budget: keep the largest gradients.
            want = int(clone.sum() + split.sum())
            if want > budget:
                keep = torch.zeros_like(is_grad)
                if budget > 0:
                    top = torch.topk(torch.where(is_grad, avg, -1.0), budget).indices
                    keep[top] = True
                clone, split = clone & keep, split & keep
            budget -= int(clone.sum() + split.sum())
            if clone.any():
                sel = clone.nonzero()[:, 0]
                _update_set(gset, optimizer, lambda _n, p: torch.cat([p, p[sel]]),
                            lambda _n, v: torch.cat([v, torch.zeros_like(v[sel])]))
                split = torch.cat([split, torch.zeros(len(sel), dtype=torch.bool, device=split.device)])
                report["cloned"] += len(sel)
            if split.any():
                sel = split.nonzero()[:, 0]
                rest = (~split).nonzero()[:, 0]
                p = gset.params
                scales = torch.exp(p["log_scales"][sel])  # [S, 3]
                rot = quat_to_matrix(p["quats"][sel])  # [S, 3, 3]
                offs = torch.einsum("sij,ksj->ksi", rot, torch.randn(2, len(sel), 3, device=scales.device) * scales)  # [2, S, 3]
                new_means = (p["means"][sel][None] + offs).reshape(-1, 3)
                new_ls = torch.log(scales / 1.6).repeat(2, 1)

                def fp(nm: str, t: torch.Tensor) -> torch.Tensor:
                    if nm == "means":
                        child = new_means
                    elif nm == "log_scales":
                        child = new_ls
                    else:
                        child = t[sel].repeat(2, *([1] * (t.dim() - 1)))
                    return torch.cat([t[rest], child])

                _update_set(gset, optimizer, fp,
                            lambda _n, v: torch.cat([v[rest], torch.zeros((2 * len(sel),) + v.shape[1:], device=v.device, dtype=v.dtype)]))
                report["split"] += len(sel)
            op = torch.sigmoid(gset.params["opacity_logits"])
            big = torch.exp(gset.params["log_scales"]).max(-1).values > cfg.prune_scale * self.unit
            prune = (op < op_floor) | big
            if prune.any() and len(gset) - int(prune.sum()) >= MIN_GAUSSIANS:
                keep = (~prune).nonzero()[:, 0]
                _update_set(gset, optimizer, lambda _n, t: t[keep], lambda _n, v: v[keep])
                report["pruned"] += int(prune.sum())
            self._reset(name, len(gset), gset.params["means"].device)
        report["total"] = sum(len(s) for s in sets.values())
        self.history.append(report)
        return report
