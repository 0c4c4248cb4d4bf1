"""Backgrounds and the final compositing step of the engine (shared by speak, --stream and the viewer).

`parse_background` reads `SpeakConfig.background`; `to_uint8` turns the renderer's premultiplied
output into the frames every caller shows or encodes (RGB over the background, or straight-alpha RGBA
when the background is transparent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.errors import AvatarError

_COLOURS = {"black": (0, 0, 0), "white": (1, 1, 1), "green": (0, 1, 0), "blue": (0, 0, 1), "red": (1, 0, 0),
            "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5)}


def parse_background(spec: str, width: int, height: int):
    """'plate' | 'transparent' | colour | image path -> ('plate'|None|np [3]|np [H, W, 3] in [0, 1], transparent?)."""
    s = spec.strip()
    if s == "plate":
        return "plate", False
    if s == "transparent":
        return None, True
    if s.lower() in _COLOURS:
        return np.array(_COLOURS[s.lower()], np.float32), False
    if s.startswith("#") and len(s) == 7:
        try:
            return np.array([int(s[i:i + 2], 16) for i in (1, 3, 5)], np.float32) / 255.0, False
        except ValueError:
            pass
    if s.count(",") == 2 and not Path(s).exists():
        try:
            v = np.array([float(x) for x in s.split(",")], np.float32)
            return (v / 255.0 if v.max() > 1.0 else v), False
        except ValueError:
            pass
    p = Path(s)
    if p.is_file():
        import cv2

        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise AvatarError(f"{p}: not a readable image for --background")
        img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_AREA)
        return img.astype(np.float32) / 255.0, False
    raise AvatarError(f"--background '{spec}': use plate, transparent, a colour (black, #RRGGBB, R,G,B) or an image file")


def to_uint8(out: dict, transparent: bool = False) -> np.ndarray:
    """Renderer output {"rgb" [B, H, W, 3], "alpha" [B, H, W, 1]} in [0, 1] -> uint8 [B, H, W, 3|4] (numpy).

    Opaque: the composited rgb. Transparent: rgb was rendered over black (premultiplied), so the straight
    colour is rgb / alpha where alpha > 0; the alpha channel is appended. Rounded to nearest."""
    import torch

    rgb = out["rgb"]
    if transparent:
        a = out["alpha"]
        straight = torch.where(a > 1e-4, rgb / a.clamp_min(1e-4), torch.zeros_like(rgb)).clamp(0, 1)
        img = torch.cat([straight, a], dim=-1)
    else:
        img = rgb
    return (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
