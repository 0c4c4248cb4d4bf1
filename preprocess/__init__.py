"""Video -> dataset folder. Installed as `avatar.preprocess` (setup.py's package_dir maps this folder there:
a top-level `preprocess` package would collide with other distributions). Layer: it imports only
`avatar.core` (shared facts: audio, landmarks, dataset format, camera maths, io) and `avatar.features`
(the audio feature extractors it shares with the inference engine) — never the model, training,
inference, evaluation, the viewer or the CLI (tests/test_layers.py walks the import graph).
See avatar/core/dataset_format.py for the dataset layout.

Entry point: `avatar.preprocess.pipeline.run_preprocess(video, out_dir, cfg, force) -> DatasetInfo`
(what `avatar preprocess` and `avatar fit` call), configured by `config.PreprocessConfig`.

The driver (pipeline.py: plan, cache markers, dataset.json) runs the stage functions of stages.py and
masks_stage.py (each checks what it wrote), which call the algorithms below.

Stages (one module each, typed inputs and outputs, run and cached by `pipeline`):
    decode      decode.py          25 fps frames from timestamps + 16 kHz mono audio aligned to frame 0
    landmarks   landmarks.py       MediaPipe face mesh (478 points), gaps interpolated; FaceMeshTracker
    pose        pose.py            bundle adjustment: canonical shape, per-frame head pose, focal
    masks       masks.py, background.py   label maps + background plate
    blink       blink.py           eye aspect ratio -> per-person blink in [0, 1]
    features    avatar.features    audio features, one row per frame (shared with the inference engine)
    preview     preview.py         contact sheet + overlay video
`avatar.core.avsync.av_offset` measures the audio-visual offset (mouth opening vs the 1-3 kHz envelope).
"""
