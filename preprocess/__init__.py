"""Video -> dataset folder (installed as `avatar.preprocess`). See avatar/dataset.py for the layout.

Entry point: `avatar.preprocess.pipeline.run_preprocess(video, out_dir, cfg, force) -> DatasetInfo`
(what `avatar preprocess` and `avatar fit` call), configured by `config.PreprocessConfig`.

Stages (one module each, typed inputs and outputs, run and cached by `pipeline`):
    decode      decode.py          25 fps frames from timestamps + 16 kHz mono audio aligned to frame 0
    landmarks   landmarks.py       MediaPipe face mesh (478 points), gaps interpolated; FaceMeshTracker
    pose        pose.py            bundle adjustment: canonical shape, per-frame head pose, focal
    masks       masks.py, background.py   label maps + background plate
    blink       blink.py           eye aspect ratio -> per-person blink in [0, 1]
    features    audio_features.py  audio features, one row per frame
    preview     preview.py         contact sheet + overlay video
`sync.av_offset` measures audio-visual offset (mouth opening vs the 1-3 kHz envelope).
"""
