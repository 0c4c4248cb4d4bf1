"""Runtime API of a trained avatar (used by `avatar speak`, `avatar view`, `avatar eval`).

    from avatar.runtime import Avatar
    av = Avatar.load("runs/NAME")                       # AvatarError if the run has no model.pt yet
    wins = av.feature_windows(feats)                    # [N, D] features of new audio -> [N, W, D]
    out = av.render(wins[:4], av.train_viewmats[:4], av.train_blink[:4])
    out["rgb"]  # [4, H, W, 3] in [0, 1], composited over the background plate

model.pt (written atomically at the end of `avatar fit`) holds the model config and state, the
render camera (K, width, height at the training resolution), the audio feature description, the
training poses/blinks (to replay head motion for new audio, as TalkingGaussian/ER-NeRF do) and the
background plate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from avatar.errors import AvatarError

MODEL_FORMAT = "avatar-model"
MODEL_VERSION = 1


def save_model(path: str | Path, model, cfg, data, data_dir: str | Path) -> None:
    """Write model.pt for `Avatar.load` (atomic)."""
    from avatar.config import to_dict
    from avatar.io import atomic_path

    tr = torch.as_tensor(data.train_idx)
    payload = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION,
        "config": to_dict(cfg),
        "feat_dim": data.feat_dim,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "fps": data.info.fps, "width": data.width, "height": data.height, "K": data.K.cpu(),
        "dataset": {"root": str(Path(data_dir).resolve()), "width": data.info.width, "height": data.info.height,
                    "train": list(data.info.split["train"]), "val": list(data.info.split.get("val", (0, 0)))},
        "feature_meta": {k: v for k, v in data.feature_meta.items()},
        "train_viewmats": data.viewmats[tr.to(data.viewmats.device)].cpu(),
        "train_blink": data.blink[tr.to(data.blink.device)].cpu(),
        "background": (data.background.cpu() * 255).round().to(torch.uint8),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Avatar:
    """A trained avatar ready to render frames from audio feature windows, head poses and blinks."""

    def __init__(self, payload: dict, device: str = "auto", run_dir: Path | None = None):
        from avatar.config import from_dict
        from avatar.model.avatar_model import AvatarModel
        from avatar.model.config import ModelConfig

        self.run_dir = run_dir
        self.device = _resolve_device(device)
        self.config = payload["config"]
        mcfg = from_dict(ModelConfig, payload["config"]["model"])
        self.model = AvatarModel.from_state(mcfg, int(payload["feat_dim"]), payload["state"]).to(self.device).eval()
        self.fps: float = float(payload["fps"])
        self.width: int = int(payload["width"])
        self.height: int = int(payload["height"])
        self.K: torch.Tensor = payload["K"].float().to(self.device)  # [3, 3]
        self.feature_meta: dict = dict(payload["feature_meta"])
        self.dataset: dict = dict(payload.get("dataset", {}))
        self.train_viewmats: torch.Tensor = payload["train_viewmats"].float().to(self.device)  # [N, 4, 4]
        self.train_blink: torch.Tensor = payload["train_blink"].float().to(self.device)  # [N]
        self.background: torch.Tensor = payload["background"].float().to(self.device) / 255.0  # [H, W, 3]
        self.backend: str = payload["config"].get("backend", "auto")

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> "Avatar":
        run_dir = Path(run_dir)
        path = run_dir / "model.pt" if run_dir.is_dir() or not run_dir.suffix else run_dir
        if not path.is_file():
            raise AvatarError(f"{run_dir}: no model.pt — the run is not finished (re-run `avatar fit ... -o {run_dir}` to resume)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise AvatarError(f"{path}: unreadable model file ({type(e).__name__}); re-run `avatar fit` for this run") from None
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise AvatarError(f"{path}: not an avatar model file")
        if int(payload.get("version", 0)) > MODEL_VERSION:
            raise AvatarError(f"{path}: model version {payload.get('version')} is newer than this avatar supports")
        return cls(payload, device, run_dir if run_dir.is_dir() else path.parent)

    @property
    def feature_window(self) -> int:
        """Feature rows around frame k that the model consumes (centred: row W//2 is frame k)."""
        return self.model.audio.window

    @property
    def feature_dim(self) -> int:
        return self.model.feat_dim

    def feature_windows(self, feats: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[N, D] per-frame features -> [N, W, D] windows centred on each frame (edge padded)."""
        from avatar.model.audio import feature_windows

        f = torch.as_tensor(np.asarray(feats, np.float32) if not torch.is_tensor(feats) else feats, device=self.device).float()
        if f.dim() != 2 or f.shape[1] != self.feature_dim:
            raise AvatarError(f"audio features must be [N, {self.feature_dim}] ({self.feature_meta.get('extractor')}), got {tuple(f.shape)}")
        return feature_windows(f, self.feature_window)

    @torch.no_grad()
    def render(self, feats: torch.Tensor, viewmats: torch.Tensor, blink: torch.Tensor, *, K: torch.Tensor | None = None,
               width: int | None = None, height: int | None = None,
               background: Literal["plate"] | torch.Tensor | None = "plate", lip_scale: float = 1.0,
               torso: bool = True) -> dict[str, torch.Tensor]:
        """Render B frames: feats [B, W, D] windows, viewmats [B, 4, 4] head->camera, blink [B].

        background: "plate" (the training plate, resized if width/height differ), a colour [3],
        an image [H, W, 3] in [0, 1], or None (premultiplied over black). lip_scale scales the
        audio-driven part of the motion. Returns rgb [B, H, W, 3] in [0, 1] and alpha [B, H, W, 1]."""
        dev = self.device
        feats = torch.as_tensor(feats, device=dev).float()
        viewmats = torch.as_tensor(viewmats, device=dev).float()
        blink = torch.as_tensor(blink, device=dev).float().reshape(-1)
        if feats.dim() != 3 or feats.shape[1:] != (self.feature_window, self.feature_dim):
            raise AvatarError(f"feats must be [B, {self.feature_window}, {self.feature_dim}], got {tuple(feats.shape)}")
        if viewmats.shape[0] != feats.shape[0] or blink.shape[0] != feats.shape[0]:
            raise AvatarError("feats, viewmats and blink must have the same batch size")
        w, h = width or self.width, height or self.height
        if K is None:
            K = self.K.clone()
            K[0] *= w / self.width
            K[1] *= h / self.height
        bg = None
        if isinstance(background, str):
            if background != "plate":
                raise AvatarError(f"background must be 'plate', a colour [3], an image [H, W, 3] or None, not '{background}'")
            bg = self.background
            if (w, h) != (self.width, self.height):
                bg = torch.nn.functional.interpolate(bg.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                                     align_corners=False)[0].permute(1, 2, 0)
        elif background is not None:
            bg = torch.as_tensor(background, device=dev).float()
        out = self.model.render(viewmats, feats, blink, torch.as_tensor(K, device=dev).float(), w, h, bg,
                                lip_scale=lip_scale, torso=torso, backend=self.backend)
        return {"rgb": out["rgb"].clamp(0, 1), "alpha": out["alpha"].clamp(0, 1)}
