"""`avatar preprocess VIDEO -o DATA_DIR`: turn a talking-head video into a training dataset folder.

    avatar preprocess clip.mp4 -o data/NAME                 all stages (cached; re-running resumes)
    avatar preprocess clip.mp4 -o data/NAME --preview       + preview/contact_sheet.jpg and overlay.mp4
    avatar preprocess clip.mp4 -o data/NAME --force pose    redo the pose stage and every stage after it
    avatar preprocess clip.mp4 -o data/NAME --features hubert --model-dir models/hubert-large

Stages: decode (25 fps from timestamps, 16 kHz mono audio aligned to frame 0), landmarks (MediaPipe
face mesh, 478 points), pose (bundle adjustment: canonical shape, per-frame head pose, focal),
masks (+ background plate), blink, features (audio, one row per frame), preview. The folder layout
is described in avatar/core/dataset_format.py; dataset.json is written last, so a folder without it is
incomplete. Nothing is downloaded: all models ship inside the installed packages.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DESCRIPTION = __doc__.split("\n", 2)[2]


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    from avatar.core.config import add_dataclass_args
    from avatar.preprocess.config import PreprocessConfig
    from avatar.preprocess.pipeline import STAGES

    p = subparsers.add_parser(name, help=summary, description=DESCRIPTION, conflict_handler="resolve",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", metavar="VIDEO", help="input video with one talking face (mp4/mov/mkv/webm, any fps/size)")
    p.add_argument("-o", "--output", dest="output", required=True, metavar="DATA_DIR",
                   help="dataset folder to create or resume (see avatar/core/dataset_format.py for its layout)")
    add_dataclass_args(p, PreprocessConfig, group_title="preprocess settings (saved to DATA_DIR/preprocess.yaml)")
    # explicit spellings of the most used settings (they replace the generated --field options)
    p.add_argument("--force", action="append", default=[], choices=STAGES, metavar="STAGE",
                   help=f"redo STAGE and every stage after it even if cached (repeatable; one of {', '.join(STAGES)})")
    p.add_argument("--preview", action="store_true",
                   help="also write preview/contact_sheet.jpg and preview/overlay.mp4 (landmarks, pose axes, masks)")
    p.add_argument("--no-audio", "--no_audio", dest="no_audio", action="store_true",
                   help="build a silent dataset (for a video without an audio track; no audio features)")
    p.add_argument("--features", choices=("phonetic+spectral", "wav2vec2", "hubert"), default=None, metavar="KIND",
                   help="audio feature extractor: phonetic+spectral (default, offline), wav2vec2 or hubert (need --model-dir)")
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", default=None, metavar="DIR",
                   help="local transformers model folder for --features wav2vec2/hubert (nothing is downloaded)")
    p.add_argument("--import-features", "--import_features", dest="import_features", default=None, metavar="NPY",
                   help="also import a precomputed feature array (ER-NeRF aud_ds.npy [T,16,29], aud_hu.npy [T,2,1024] or [T,D])")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or stage lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from avatar.core.config import apply_overrides, overrides_from_args
    from avatar.preprocess.config import PreprocessConfig
    from avatar.preprocess.pipeline import run_preprocess

    cfg = apply_overrides(PreprocessConfig(), overrides_from_args(args))
    if args.preview:
        cfg.preview = True
    if args.no_audio:
        cfg.no_audio = True
    if args.features is not None:
        cfg.features = args.features
    if args.model_dir is not None:
        cfg.model_dir = Path(args.model_dir)
    if args.import_features is not None:
        cfg.import_features = Path(args.import_features)
    import warnings

    warnings.filterwarnings("ignore", message=".*GetPrototype.*")  # protobuf deprecation noise from mediapipe
    logging.basicConfig(level=logging.WARNING, format="avatar preprocess: warning: %(message)s")
    info = run_preprocess(Path(args.video), Path(args.output), cfg, force=args.force,
                          progress=None if not args.quiet else False)
    q = info.raw.get("quality", {})
    if not args.quiet:
        print(f"avatar preprocess: {info.root}: {info.num_frames} frames {info.width}x{info.height} @ {info.fps:g} fps, "
              f"faces {q.get('faces_found')}/{info.num_frames}, reprojection {q.get('reproj_px', float('nan')):.2f} px, "
              f"jitter {q.get('rot_jitter_deg', float('nan')):.2f} deg/frame^2", file=sys.stderr)
    return 0
