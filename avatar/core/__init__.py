"""Layer 0: the shared facts every other part of `avatar` may import, and that import nothing above them.

- `audio`           audio loading, probing and validation; `SAMPLE_RATE` (the one 16 kHz definition)
- `landmarks`       MediaPipe face-mesh index sets and `mouth_opening`
- `avsync`          audio/visual sync measure (mouth opening vs the speech envelope)
- `camera`          camera maths (Euler offsets, orbits, plate homographies)
- `dataset_format`  the dataset folder contract (labels, cameras, feature metadata, the held-out split)
- `config`          dataclass configs -> YAML and argparse flags
- `io`              atomic writes; `video_writer` mp4/PNG writers; `logs` native log muting

Imports from here go only to `avatar.errors`, the standard library and third-party packages.
"""
