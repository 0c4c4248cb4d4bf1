"""Audio path: per-frame AudioNet over a window of feature rows + AudioAttNet temporal smoothing.

Follows AD-NeRF / ER-NeRF / TalkingGaussian (design/model.md §3): AudioNet is a stack of stride-2
1D convolutions over the window with LeakyReLU(0.02) followed by an MLP to a 32-d code; AudioAttNet
stacks the codes of neighbouring frames, predicts softmax weights with 1D convolutions + a linear
layer and returns their weighted sum (temporal smoothing that can ignore outliers).

Our features are per-video-frame rows [N, D] (features/NAME.npy), so a window is a stack of
neighbouring rows: AudioNet sees `audio_window` rows around a frame, AudioAttNet combines the codes
of `att_window` frames around it, hence one frame consumes `audio_window + att_window - 1` rows
(`AudioEncoder.window`). By default they are centred on the frame; `ModelConfig.audio_lookahead`
shifts them into the past so that the window for frame k is rows k - past ... k + future with
future = the look-ahead (`AudioEncoder.past` / `.future`): a trained model property, so streaming
waits for `future` rows only and sees at inference what it saw in training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AudioNet(nn.Module):
    """[B, W, D] window of feature rows -> [B, out_dim] code (AD-NeRF AudioNet, ER-NeRF/TG identical)."""

    def __init__(self, in_dim: int, out_dim: int = 32, window: int = 9):
        super().__init__()
        chans = [in_dim, 32, 32, 64, 64]
        convs, w = [], window
        for i in range(4):
            convs.append(nn.Conv1d(chans[i], chans[i + 1], 3, stride=2, padding=1))
            w = (w + 1) // 2
        self.convs = nn.ModuleList(convs)
        self.mlp = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(0.02), nn.Linear(64, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)  # [B, D, W]
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.02)
        return self.mlp(h.mean(-1))  # [B, out_dim]


class AudioAttNet(nn.Module):
    """[B, A, C] codes of A neighbouring frames -> [B, C] softmax-weighted sum (AD-NeRF AudioAttNet)."""

    def __init__(self, dim: int = 32, length: int = 9):
        super().__init__()
        chans = [dim, 16, 8, 4, 2, 1]
        self.convs = nn.ModuleList([nn.Conv1d(chans[i], chans[i + 1], 3, padding=1) for i in range(5)])
        self.linear = nn.Linear(length, length)

    def weights(self, codes: torch.Tensor) -> torch.Tensor:
        h = codes.transpose(1, 2)  # [B, C, A]
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.02)
        return torch.softmax(self.linear(h[:, 0]), -1)  # [B, A]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return (self.weights(codes)[..., None] * codes).sum(1)  # [B, C]


def centred_future(window: int) -> int:
    """Future rows of a centred window of `window` rows (row window // 2 is the frame)."""
    return window - 1 - window // 2


class AudioEncoder(nn.Module):
    """Feature windows [B, audio_window + att_window - 1, D] (raw rows) -> audio code [B, dim].

    The window for frame k is rows k - past ... k + future (`past`, `future`; `lookahead` = -1:
    centred, else future = lookahead). `lookahead` is a plain attribute taken from the model config
    (not a buffer), so model files written before it existed load unchanged as centred.
    Rows are normalised with the training clip's per-dimension mean/std (buffers, saved with the
    model, so new audio is normalised the same way), with two guards for audio unlike the training clip's
    (issue 17): the std is floored at `STD_FLOOR` and normalised values are clipped to +-`Z_CLIP`. Without them
    a viseme class the clip (almost) never used (std ~1e-3, e.g. "oy" in a 50 s address) reached the network as
    a value of ~1000 the first time another voice or language produced it, and the mouth flew open to 14x its
    widest training gap (measured on macron_50s_30fps driven by real3dportrait_obama_5s.wav). Both apply in
    `forward`, so runs saved before them are guarded too.
    """

    STD_FLOOR = 0.1
    """A one-hot class seen on 1 % of the frames has std 0.1: rarer classes are not blown up beyond that."""
    Z_CLIP = 8.0
    """Normalised inputs beyond 8 training std are out of distribution: clipped."""

    def __init__(self, in_dim: int, dim: int = 32, audio_window: int = 9, att_window: int = 9, lookahead: int = -1):
        super().__init__()
        self.in_dim, self.audio_window, self.att_window = in_dim, audio_window, att_window
        w = audio_window + att_window - 1
        if lookahead != -1 and not 0 <= lookahead <= w - 1:
            raise ValueError(f"audio lookahead must be -1 (centred) or in [0, {w - 1}], got {lookahead}")
        self.lookahead = int(lookahead)
        self.net = AudioNet(in_dim, dim, audio_window)
        self.att = AudioAttNet(dim, att_window)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))

    @property
    def window(self) -> int:
        return self.audio_window + self.att_window - 1

    @property
    def future(self) -> int:
        """Feature rows after the frame's own row that the window reaches."""
        return centred_future(self.window) if self.lookahead < 0 else self.lookahead

    @property
    def past(self) -> int:
        """Feature rows before the frame's own row in the window (window = past + 1 + future)."""
        return self.window - 1 - self.future

    def set_normalisation(self, feats: torch.Tensor) -> None:
        """feats: [N, D] training rows."""
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp_min(1e-4))

    def forward(self, windows: torch.Tensor, smooth: bool = True) -> torch.Tensor:
        """windows: [B, W, D] with W == self.window, frame k's row at index `past` -> [B, dim]."""
        b, w, d = windows.shape
        if w != self.window or d != self.in_dim:
            raise ValueError(f"audio windows must be [B, {self.window}, {self.in_dim}], got {tuple(windows.shape)}")
        x = ((windows - self.feat_mean) / self.feat_std.clamp_min(self.STD_FLOOR)).clamp(-self.Z_CLIP, self.Z_CLIP)  # [B, W, D]
        if not smooth:
            c = self.att_window // 2
            return self.net(x[:, c:c + self.audio_window])
        sub = x.unfold(1, self.audio_window, 1)  # [B, A, D, aw]
        codes = self.net(sub.permute(0, 1, 3, 2).reshape(b * self.att_window, self.audio_window, d))
        return self.att(codes.reshape(b, self.att_window, -1))


def window_offsets(window: int, future: int | None = None) -> tuple[int, int]:
    """(past, future) rows of a window of `window` rows; future None = centred."""
    f = centred_future(window) if future is None else int(future)
    if not 0 <= f <= window - 1:
        raise ValueError(f"window future rows must be in [0, {window - 1}], got {future}")
    return window - 1 - f, f


def window_indices(idx: torch.Tensor, window: int, future: int | None = None, num_rows: int | None = None) -> torch.Tensor:
    """Frame indices idx [B] -> row indices [B, window]: rows k - past ... k + future, clamped to
    [0, num_rows - 1] when num_rows is given (edge padding)."""
    past, _ = window_offsets(window, future)
    out = idx[:, None] + torch.arange(-past, window - past, device=idx.device)[None]
    return out if num_rows is None else out.clamp(0, num_rows - 1)


def feature_windows(feats: torch.Tensor, window: int, future: int | None = None) -> torch.Tensor:
    """[N, D] per-frame rows -> [N, window, D] windows, edge padded: the window of frame k is rows
    k - past ... k + future (past = window - 1 - future); future None = centred (row window // 2 is
    the frame, `AudioEncoder` with lookahead -1).

    Edge padding (repeat the first/last row) rather than zeros: a zero row is not the feature of
    silence for most extractors (design/model.md §5, "mouth ajar on silent audio").
    """
    idx = window_indices(torch.arange(feats.shape[0], device=feats.device), window, future, feats.shape[0])
    return feats[idx]  # [N, window, D]
