"""Interactive web viewer, started by `avatar view RUN`. Installed as `avatar.viewer` (setup.py's package_dir
maps this folder there: a top-level `viewer` package would collide with other distributions). Layer: it
renders through the one inference engine (`avatar.engine`) and imports `avatar.core`; never training,
evaluation or the CLI (tests/test_layers.py walks the import graph).

    camera.py  viser browser camera <-> head-frame view matrix / intrinsics (pure numpy)
    clips.py   audio clips: `--audio-dir` listing, validated uploads in a private temp folder
    server.py  `AvatarViewer`: viser server, GUI, server-side rendering loop, audio sync
"""
