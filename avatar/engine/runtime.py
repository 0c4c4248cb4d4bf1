"""Runtime API of a trained avatar (used by `avatar speak`, `avatar view`, `avatar eval`).

    from avatar.engine.runtime import Avatar
    av = Avatar.load("runs/NAME")                       # AvatarError if the run has no model.pt yet
    wins = av.feature_windows(feats)                    # [N, D] features of new audio -> [N, W, D]
    out = av.render(wins[:4], av.train_viewmats[:4], av.train_blink[:4])
    out["rgb"]  # [4, H, W, 3] in [0, 1], composited over the background plate

model.pt (written atomically at the end of `avatar fit`) holds the model config and state, the
render camera (K, width, height at the training resolution), the audio feature description, the
training poses/blinks (to replay head motion for new audio, as TalkingGaussian/ER-NeRF do), the
background plate and the silence statistics of the training clip (`training_stats`,
avatar/engine/features.py), so inference never reads the training dataset; since issue 12 also the source
clip's size ("source", the default output size: `output_frame`) and the sharpest plate there is ("plate": the
source-size plate rebuilt from source frames, else the dataset's background.png). Older model files lack both
and fall back to their dataset size and training plate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from avatar.errors import AvatarError

MODEL_FORMAT = "avatar-model"
MODEL_VERSION = 1

PLATE_DEPTH_FACTOR = 2.5
"""Free-view cameras: the background plate is treated as a plane fronto-parallel to the training camera
at this many times the mean head depth (the training poses' z), i.e. a wall well behind the person."""


def save_model(path: str | Path, model, cfg, data, data_dir: str | Path) -> None:
    """Write model.pt for `Avatar.load` (atomic)."""
    from avatar.core.config import to_dict
    from avatar.core.io import atomic_path

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
        "source": _source_size(data.info),
        "plate": _native_plate(data.info),
        "training_stats": _training_stats_payload(model, data, data_dir),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _source_size(info) -> dict:
    """{"width", "height"} of the source clip (dataset.json "source", upright); the dataset size if absent."""
    src = info.raw.get("source") if isinstance(info.raw.get("source"), dict) else {}
    try:
        w, h = int(src["width"]), int(src["height"])
    except (KeyError, TypeError, ValueError):
        w, h = info.width, info.height
    return {"width": w, "height": h} if w > 0 and h > 0 else {"width": info.width, "height": info.height}


def _native_plate(info) -> torch.Tensor | None:
    """The background plate for native-size output (uint8 [H, W, 3]): at the source size when the source is
    larger than the dataset and still readable, else background.png at the dataset resolution (the training
    plate is at the training resolution); None if unreadable."""
    import cv2

    try:  # a source larger than the dataset: the plate rebuilt from source frames (preprocess/background.py)
        from avatar.preprocess.background import source_plate

        plate = source_plate(info)
    except ImportError:  # pragma: no cover - preprocess not installed
        plate = None
    if plate is not None:
        return torch.from_numpy(np.ascontiguousarray(plate))
    bg = cv2.imread(str(info.path("background.png")), cv2.IMREAD_COLOR)
    if bg is None:
        return None
    return torch.from_numpy(cv2.cvtColor(bg, cv2.COLOR_BGR2RGB).copy())


def _training_stats_payload(model, data, data_dir) -> dict | None:
    """The silence statistics `Speaker` needs (silent row, level track, closed-mouth window), computed once
    from the dataset at the end of training; None (inference falls back to the dataset) if unreadable."""
    from avatar.engine.features import dataset_stats

    split = data.info.split["train"]
    try:
        was = model.training
        model.eval()
        try:
            st = dataset_stats(model, Path(data_dir).resolve(), getattr(data, "feature_name", None), tuple(split[:2]),
                               next(model.parameters()).device)
        finally:
            model.train(was)
    except (AvatarError, OSError, KeyError, ValueError, TypeError):
        return None
    return st.to_payload() | {"source": st.source}


def plate_homographies(K: torch.Tensor, cameras: torch.Tensor, depth: float) -> torch.Tensor:
    """[B, 3, 3] pixel maps training image -> new image for the plane z = depth of the training camera.

    A point X on the plane n^T X = depth (n = [0, 0, 1]) seen by the new camera X' = R X + t satisfies
    X' = (R + t n^T / depth) X, hence the plane-induced homography H = K (R + t n^T / depth) K^-1
    (Hartley & Zisserman, Multiple View Geometry, 2nd ed., eq. 13.2, written for the plane n^T X = d
    rather than n^T X + d = 0, hence the sign)."""
    K = K.to(cameras.dtype)
    n = torch.tensor([0.0, 0.0, 1.0], dtype=cameras.dtype, device=cameras.device)
    A = cameras[:, :3, :3] + cameras[:, :3, 3:4] * n[None, None, :] / depth  # [B, 3, 3]
    return K[None] @ A @ torch.linalg.inv(K)[None]


def reproject_plate(plate: torch.Tensor, K: torch.Tensor, cameras: torch.Tensor, depth: float) -> torch.Tensor:
    """Warp a background image [H, W, 3] for B camera moves [B, 4, 4] -> [B, H, W, 3].

    Each output pixel centre (j + 0.5, i + 0.5) (the rasterizer's convention) is mapped back through
    H^-1 (`plate_homographies`) and sampled bilinearly; pixels whose source falls outside the plate take
    the nearest edge pixel (edge clamp). Frames whose camera is exactly the identity get the plate
    unchanged (bit for bit)."""
    h, w = plate.shape[:2]
    dev = plate.device
    eye = torch.eye(4, device=cameras.device, dtype=cameras.dtype)
    moved = [i for i in range(cameras.shape[0]) if not torch.equal(cameras[i], eye)]
    out = plate[None].expand(cameras.shape[0], -1, -1, -1).clone()
    if not moved:
        return out
    Hinv = torch.linalg.inv(plate_homographies(K.double(), cameras[moved].double(), float(depth)))  # [M, 3, 3]
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # [HW, 3]
    src = pix[None] @ Hinv.to(dev).transpose(1, 2)  # [M, HW, 3]
    z = src[..., 2:3]
    z = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    uv = src[..., :2] / z  # [M, HW, 2] source pixel coordinates
    uv = torch.where(src[..., 2:3] > 0, uv, torch.full_like(uv, -1e6))  # behind the plane's horizon: clamp
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1).clamp(-2, 2)  # align_corners=False
    img = plate.permute(2, 0, 1)[None].expand(len(moved), -1, -1, -1).float()
    warped = torch.nn.functional.grid_sample(img, grid.reshape(len(moved), h, w, 2).float(), mode="bilinear",
                                             padding_mode="border", align_corners=False)  # [M, 3, H, W]
    out[moved] = warped.permute(0, 2, 3, 1).to(out.dtype)
    return out


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Avatar:
    """A trained avatar ready to render frames from audio feature windows, head poses and blinks."""

    def __init__(self, payload: dict, device: str = "auto", run_dir: Path | None = None):
        from avatar.core.config import from_dict
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
        src = payload.get("source") or {}
        ds = self.dataset
        self.source_width: int = int(src.get("width") or ds.get("width") or self.width)
        """Width of the source clip in pixels: the default output size (`output_frame`). Runs saved before it was
        stored fall back to their dataset size."""
        self.source_height: int = int(src.get("height") or ds.get("height") or self.height)
        plate = payload.get("plate")
        self.plate: torch.Tensor = plate.float().to(self.device) / 255.0 if plate is not None else self.background
        """[H, W, 3] the sharpest background plate stored (dataset resolution; the training one in older runs)."""
        st = payload.get("training_stats")
        self.training_stats = None
        """`TrainingStats` saved by `avatar fit` (None for runs saved before they were: read from the dataset)."""
        if st is not None:
            from avatar.engine.features import TrainingStats

            self.training_stats = TrainingStats.from_payload(st, f"{st.get('source', '')} (stored in model.pt)")

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> Avatar:
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
    def source_K(self) -> torch.Tensor:
        """[3, 3] intrinsics in pixels of the source clip (the training K scaled by source / training size)."""
        K = self.K.clone()
        K[0] *= self.source_width / self.width
        K[1] *= self.source_height / self.height
        return K

    def output_frame(self, size: str | tuple | None = None, scale: float | None = None, fit: str | None = None):
        """`avatar.core.camera.OutputFrame` for a requested size (default: the source clip's size); a bad request
        raises a one-line `AvatarError` (exit code 2)."""
        from avatar.core.camera import output_frame

        try:
            return output_frame(self.source_width, self.source_height, size, scale, fit)
        except ValueError as e:
            raise AvatarError(str(e)) from None

    def plate_image(self, K: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """[height, width, 3] the plate seen by intrinsics K (same camera pose): the stored plate mapped by the
        affine change of intrinsics (a plain resize when K is the training K scaled), edge pixels repeated.
        The last result is kept (every frame of a render asks for the same one); treat it as read-only."""
        key = (tuple(float(v) for v in torch.as_tensor(K).reshape(-1).tolist()), int(width), int(height))
        memo = getattr(self, "_plate_memo", None)
        if memo is not None and memo[0] is self.plate and memo[1] == key:
            return memo[2]
        img = self._plate_image(K, width, height)
        self._plate_memo = (self.plate, key, img)
        return img

    def _plate_image(self, K: torch.Tensor, width: int, height: int) -> torch.Tensor:
        plate = self.plate
        ph, pw = plate.shape[:2]
        Kp = self.source_K.clone()
        Kp[0] *= pw / self.source_width
        Kp[1] *= ph / self.source_height
        ax, ay = float(K[0, 0] / Kp[0, 0]), float(K[1, 1] / Kp[1, 1])
        bx, by = float(K[0, 2] - ax * Kp[0, 2]), float(K[1, 2] - ay * Kp[1, 2])
        img = plate.permute(2, 0, 1)[None]
        if abs(bx) < 1e-3 and abs(by) < 1e-3 and abs(ax * pw - width) < 1 and abs(ay * ph - height) < 1:
            if (width, height) == (pw, ph):
                return plate
            return torch.nn.functional.interpolate(img, size=(height, width), mode="bilinear", align_corners=False,
                                                   antialias=width < pw)[0].permute(1, 2, 0)
        xs = ((torch.arange(width, device=plate.device) + 0.5 - bx) / ax) / pw * 2 - 1
        ys = ((torch.arange(height, device=plate.device) + 0.5 - by) / ay) / ph * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None].float()  # [1, H, W, 2]
        return torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)[0].permute(1, 2, 0)

    @property
    def plate_depth(self) -> float:
        """Depth of the background plane for free-view cameras: PLATE_DEPTH_FACTOR x the mean head depth."""
        return PLATE_DEPTH_FACTOR * max(float(self.train_viewmats[:, 2, 3].mean()), 1e-6)

    @property
    def feature_window(self) -> int:
        """Feature rows around frame k that the model consumes: rows k - feature_past ... k + feature_future
        (centred models, `ModelConfig.audio_lookahead` = -1: row W//2 is frame k)."""
        return self.model.audio.window

    @property
    def feature_future(self) -> int:
        """Feature rows after frame k's own row in its window (the look-ahead streaming must wait for)."""
        return self.model.audio.future

    @property
    def feature_past(self) -> int:
        """Feature rows before frame k's own row in its window."""
        return self.model.audio.past

    @property
    def feature_dim(self) -> int:
        return self.model.feat_dim

    def feature_windows(self, feats: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[N, D] per-frame features -> [N, W, D] windows of each frame (rows k - feature_past ... k + feature_future,
        edge padded), as in training."""
        from avatar.model.audio import feature_windows

        f = torch.as_tensor(np.asarray(feats, np.float32) if not torch.is_tensor(feats) else feats, device=self.device).float()
        if f.dim() != 2 or f.shape[1] != self.feature_dim:
            raise AvatarError(f"audio features must be [N, {self.feature_dim}] ({self.feature_meta.get('extractor')}), got {tuple(f.shape)}")
        return feature_windows(f, self.feature_window, self.feature_future)

    @torch.no_grad()
    def render(self, feats: torch.Tensor, viewmats: torch.Tensor, blink: torch.Tensor, *, K: torch.Tensor | None = None,
               width: int | None = None, height: int | None = None,
               background: Literal["plate"] | torch.Tensor | None = "plate", lip_scale: float = 1.0,
               torso: bool = True, camera: torch.Tensor | np.ndarray | None = None, frame=None,
               torso_shift: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Render B frames: feats [B, W, D] windows, viewmats [B, 4, 4] head->camera, blink [B].

        background: "plate" (the training plate, resized if width/height differ), a colour [3],
        an image [H, W, 3] in [0, 1], or None (premultiplied over black). lip_scale scales the
        audio-driven part of the motion.
        camera: free-view camera moves [B, 4, 4] (or one [4, 4] for all frames), training-camera frame ->
        new camera frame; None = the training camera. Head and torso move as one body (see
        `AvatarModel.render`); a plate or image background is re-projected as a plane fronto-parallel to
        the training camera at PLATE_DEPTH_FACTOR x the mean head depth (`reproject_plate`); a colour
        needs nothing. Returns rgb [B, H, W, 3] in [0, 1] and alpha [B, H, W, 1].
        frame: an `output_frame(...)` (e.g. the source size): renders through it (K and size from the source
        camera; letterbox bars of --fit pad are black, transparent or the colour background) and overrides
        K / width / height. torso_shift [B, 2]: the frames' measured torso shifts (`avatar eval` on real frames;
        None: predicted from the head pose, avatar/core/torso.py). Layered models (`ModelConfig.layered`) draw the head in a head crop over the torso
        layer (avatar/engine/composite.py)."""
        dev = self.device
        feats = torch.as_tensor(feats, device=dev).float()
        viewmats = torch.as_tensor(viewmats, device=dev).float()
        blink = torch.as_tensor(blink, device=dev).float().reshape(-1)
        if feats.dim() != 3 or feats.shape[1:] != (self.feature_window, self.feature_dim):
            raise AvatarError(f"feats must be [B, {self.feature_window}, {self.feature_dim}], got {tuple(feats.shape)}")
        if viewmats.shape[0] != feats.shape[0] or blink.shape[0] != feats.shape[0]:
            raise AvatarError("feats, viewmats and blink must have the same batch size")
        cams = None
        if camera is not None:
            cams = torch.as_tensor(np.asarray(camera, np.float32) if not torch.is_tensor(camera) else camera, device=dev).float()
            if cams.shape == (4, 4):
                cams = cams[None].expand(feats.shape[0], 4, 4)
            if cams.shape != (feats.shape[0], 4, 4) or not bool(torch.isfinite(cams).all()):
                raise AvatarError(f"camera must be finite [B, 4, 4] or [4, 4] with B = {feats.shape[0]}, got {tuple(cams.shape)}")
        if frame is not None:
            K = torch.as_tensor(frame.intrinsics(self.source_K.double().cpu().numpy()), dtype=torch.float32, device=dev)
            width, height = frame.render_w, frame.render_h
        w, h = width or self.width, height or self.height
        if K is None:
            K = self.K.clone()
            K[0] *= w / self.width
            K[1] *= h / self.height
        bg = None
        if isinstance(background, str):
            if background != "plate":
                raise AvatarError(f"background must be 'plate', a colour [3], an image [H, W, 3] or None, not '{background}'")
            if frame is not None or (w, h) != (self.width, self.height):
                bg = self.plate_image(torch.as_tensor(K, device=dev).float() if frame is not None else
                                      self.K * torch.tensor([[w / self.width], [h / self.height], [1.0]], device=dev), w, h)
            else:
                bg = self.background
        elif background is not None:
            bg = torch.as_tensor(background, device=dev).float()
        K = torch.as_tensor(K, device=dev).float()
        if cams is not None and bg is not None and bg.dim() == 3:
            if bg.shape[:2] != (h, w):
                raise AvatarError(f"background image must be [{h}, {w}, 3], got {tuple(bg.shape)}")
            bg = reproject_plate(bg, K, cams, self.plate_depth)
        from avatar.engine.composite import render_layers

        out = render_layers(self.model, viewmats, feats, blink, K, w, h, bg, lip_scale=lip_scale, torso=torso,
                            backend=self.backend, cameras=cams,
                            torso_shift=None if torso_shift is None else torch.as_tensor(torso_shift, device=dev).float())
        rgb, alpha = out["rgb"].clamp(0, 1), out["alpha"].clamp(0, 1)
        if frame is not None and frame.padded:  # --fit pad: letterbox bars (the colour background, else black)
            fill = bg if bg is not None and bg.dim() == 1 else torch.zeros(3, device=dev)
            canvas = fill.view(1, 1, 1, 3).expand(rgb.shape[0], frame.height, frame.width, 3).clone()
            acanvas = torch.zeros(rgb.shape[0], frame.height, frame.width, 1, device=dev)
            if bg is not None and bg.dim() == 1:
                acanvas.fill_(1.0)
            y, x = frame.pad_y, frame.pad_x
            canvas[:, y:y + h, x:x + w] = rgb
            acanvas[:, y:y + h, x:x + w] = alpha
            rgb, alpha = canvas, acanvas
        return {"rgb": rgb, "alpha": alpha, "boxes": out.get("boxes")}
