"""Which audio features carry lip sync across voices and languages? A fast probe, minutes instead of fits.

    python bench/lipsync_probe.py data/lieu data/macron            (default audio: ../shared/data/audio)
    python bench/lipsync_probe.py data/lieu --variants all,no_viseme,aug

For each dataset (a preprocessed clip) and each feature variant, a small network (a 9-row window of
feature rows -> mouth opening, the same window the motion network sees, model.md §3) is trained on the
clip's training frames to predict its MediaPipe mouth opening, then driven by every audio file of the
folder. Each prediction is scored like a rendered avatar (`avatar.core.avsync.av_offset`: AV-offset and
AV-corr against the 1-3 kHz envelope) and compared with the clip's own figures, the issue-17 targets:
|offset - clip offset| <= 1 frame and corr >= 0.6 x the clip's corr per speech file, >= 0.8 x on average.

The probe isolates the question "do these features let a mapping learnt on one speaker drive the mouth for
other voices?" from rendering; `bench/lipsync.py` measures trained avatars end to end. Variants:
  all          the dataset's features as they are (log-mel, loudness, visemes)
  no_viseme    without the pocketsphinx viseme columns
  viseme_only  visemes + loudness only
  aug          all, trained also on features of the clip's audio pitch-shifted by +-2 and +-4 semitones
  no_viseme_aug, viseme_drop (visemes zeroed for half the training rows), viseme_drop_aug
Ends with one JSON line (per dataset and variant: per-file offset/corr, means, targets met) and the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

SHIFTS = (-4.0, -2.0, 2.0, 4.0)
VARIANTS = ("all", "no_viseme", "viseme_only", "aug", "no_viseme_aug", "viseme_drop", "viseme_drop_aug",
            "lifter", "lifter_aug", "lifter_no_viseme_aug")
LIFTER = 12  # cepstral coefficients kept by the "lifter" variants (the spectral envelope without pitch harmonics)


def _lifter(f: np.ndarray, layout: dict) -> np.ndarray:
    """Log-mel rows replaced by their first LIFTER DCT coefficients per sub-step (MFCC-like: envelope only)."""
    from scipy.fft import dct

    a, b = layout["logmel"]
    n_mels = 40
    mel = f[:, a:b].reshape(len(f), -1, n_mels)
    c = dct(mel, type=2, norm="ortho", axis=-1)[..., :LIFTER].reshape(len(f), -1) / 3.0
    return np.concatenate([c, f[:, b:]], axis=1).astype(np.float32)
WINDOW = 9
SINGING = ("itosinger",)


def _columns(layout: dict, variant: str, dim: int) -> np.ndarray:
    keep = np.ones(dim, bool)
    v0, v1 = layout["viseme"]
    if variant.startswith("lifter"):  # columns of the liftered rows: LIFTER per sub-step, then the rest
        shift = (layout["logmel"][1] - layout["logmel"][0]) // 40 * (40 - LIFTER)
        keep = np.ones(dim, bool)  # dim: the liftered width
        v0, v1 = v0 - shift, v1 - shift
        if "no_viseme" in variant:
            keep[v0:v1] = False
        return keep
    if variant.startswith("no_viseme"):
        keep[v0:v1] = False
    if variant == "viseme_only":
        keep[:layout["logmel"][1]] = False
    return keep


def _windows(f: np.ndarray) -> np.ndarray:
    """[N, WINDOW*D]: rows k-4..k+4 (edge rows repeated)."""
    h = WINDOW // 2
    pad = np.concatenate([np.repeat(f[:1], h, 0), f, np.repeat(f[-1:], h, 0)])
    return np.stack([pad[i:i + len(f)] for i in range(WINDOW)], 1).reshape(len(f), -1)


def _train(xs: list[np.ndarray], y: np.ndarray, drop_cols: np.ndarray | None, seed: int = 0, steps: int = 1500):
    import torch

    torch.manual_seed(seed)
    X = torch.as_tensor(np.concatenate(xs), dtype=torch.float32)
    Y = torch.as_tensor(np.tile(y, len(xs)), dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), 2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    drop = None if drop_cols is None else torch.as_tensor(np.tile(drop_cols, WINDOW))
    for _ in range(steps):
        idx = torch.randint(0, len(X), (256,), generator=g)
        xb = X[idx]
        if drop is not None:
            rows = torch.rand(len(xb), 1, generator=g) < 0.5
            xb = torch.where(rows & drop[None], torch.zeros(()), xb)
        loss = torch.nn.functional.mse_loss(net(xb)[:, 0], Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return lambda x: net(torch.as_tensor(x, dtype=torch.float32))[:, 0].detach().numpy()


def probe(data_dir: Path, audio_dir: Path, variants: list[str], seeds: int = 1) -> dict:
    from avatar.core.audio import SAMPLE_RATE, load_audio
    from avatar.core.avsync import av_offset
    from avatar.core.dataset_format import load_dataset
    from avatar.core.landmarks import mouth_opening
    from avatar.core.voice import pitch_shift
    from avatar.features import FeatureExtractor

    info = load_dataset(data_dir)
    fps = info.fps
    feats = np.asarray(info.feature(), np.float32)
    import json
    meta = json.loads((info.root / "features" / (info.default_feature + ".json")).read_text())
    ex = FeatureExtractor.from_meta(meta)
    wav = load_audio(info.path("audio.wav"))
    mouth = mouth_opening(np.asarray(info.landmarks()))
    gt_lag, gt_corr = av_offset(mouth, wav, SAMPLE_RATE, fps)
    tr = info.indices("train")
    y = (mouth - mouth[tr].mean()) / mouth[tr].std()
    need_aug = any("aug" in v for v in variants)
    aug = [ex(pitch_shift(wav, s), info.num_frames, fps)[0] for s in SHIFTS] if need_aug else []
    files = sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in (".wav", ".mp3", ".flac"))
    drive = {}
    shifted = {}
    for p in files:
        w = load_audio(p)
        drive[p.stem] = (w, ex(w, None, fps)[0])
        shifted[p.stem] = [ex(pitch_shift(w, s), None, fps)[0] for s in (-3.0, 3.0)]
    out = {"dataset": str(data_dir), "gt_av_offset_frames": int(gt_lag), "gt_av_corr": round(float(gt_corr), 3),
           "variants": {}}
    raw = (feats, aug, drive, shifted)
    for v in variants:
        feats, aug, drive, shifted = raw
        if v.startswith("lifter"):
            L = lambda f: _lifter(f, meta["layout"])  # noqa: E731
            feats, aug = L(feats), [L(f) for f in aug]
            drive = {n: (w, L(f)) for n, (w, f) in drive.items()}
            shifted = {n: [L(g) for g in gs] for n, gs in shifted.items()}
        keep = _columns(meta["layout"], v, feats.shape[1])
        drop_cols = None
        if v.startswith("viseme_drop"):
            v0, v1 = meta["layout"]["viseme"]
            drop_cols = np.zeros(int(keep.sum()), bool)
            drop_cols[v0:v1] = True
        sets = [feats] + (aug if v.endswith("aug") else [])
        if v.startswith("lifter"):
            drop_cols = None
        t0 = time.perf_counter()
        val = info.indices("val")
        own_val, per_seed, shift_corr = [], [], {}
        for seed in range(seeds):  # the probe network's own randomness, averaged out
            predict = _train([_windows(f[:, keep])[tr] for f in sets], y[tr], drop_cols, seed=seed)
            own = predict(_windows(feats[:, keep]))
            own_val.append(float(np.corrcoef(own[val], y[val])[0, 1]))
            per_seed.append({name: av_offset(predict(_windows(f[:, keep])), w, SAMPLE_RATE, fps)
                             for name, (w, f) in drive.items()})
            for name, (w, f) in drive.items():  # the same speech in a higher / lower voice: same motion?
                ref = predict(_windows(f[:, keep]))
                shift_corr.setdefault(name, []).extend(
                    float(np.corrcoef(ref, predict(_windows(g[:, keep])))[0, 1]) for g in shifted[name])
        rows = {}
        for name in drive:
            lags = np.array([p[name][0] for p in per_seed])
            corr = float(np.mean([p[name][1] for p in per_seed]))
            rows[name] = {"offset": float(np.median(lags)), "corr": round(corr, 3),
                          "d_offset": float(np.median(lags) - gt_lag), "corr_ratio": round(corr / gt_corr, 3),
                          "abs_d_offset_mean": round(float(np.abs(lags - gt_lag).mean()), 2),
                          "pitch3_corr": round(float(np.mean(shift_corr[name])), 3)}
        speech = [r for n, r in rows.items() if not any(s in n for s in SINGING)]
        res = {"val_mouth_corr": round(float(np.mean(own_val)), 3), "seeds": seeds,
               "mean_abs_d_offset": round(float(np.mean([r["abs_d_offset_mean"] for r in speech])), 2),
               "mean_corr_ratio": round(float(np.mean([r["corr_ratio"] for r in speech])), 3),
               "min_corr_ratio": round(float(np.min([r["corr_ratio"] for r in speech])), 3),
               "files_offset_ok": sum(abs(r["d_offset"]) <= 1 for r in speech), "speech_files": len(speech),
               "min_pitch3_corr": round(float(np.min([r["pitch3_corr"] for r in speech])), 3),
               "train_s": round(time.perf_counter() - t0, 1), "files": rows}
        out["variants"][v] = res
        print(f"{data_dir.name:>24} {v:>16}: val corr {res['val_mouth_corr']:.2f}  |d off| {res['mean_abs_d_offset']:.2f}  "
              f"off ok {res['files_offset_ok']}/{len(speech)}  corr x{res['mean_corr_ratio']:.2f} "
              f"(min x{res['min_corr_ratio']:.2f})  pitch+-3 corr min {res['min_pitch3_corr']:.2f}  " +
              " ".join(f"{n[-8:]}:{r['d_offset']:+.0f}/{r['corr_ratio']:.2f}" for n, r in rows.items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path, help="preprocessed dataset folders (avatar preprocess)")
    ap.add_argument("--audio-dir", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/audio",
                    help="folder of driving audio files (default ../shared/data/audio)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", type=int, default=3, help="probe networks per variant (their randomness is averaged)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    res = [probe(d, a.audio_dir.resolve(), variants, a.seeds) for d in a.datasets]
    emit({"bench": "lipsync_probe", "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
