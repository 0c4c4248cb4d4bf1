"""Interactive web viewer (installed as `avatar.viewer`), started by `avatar view RUN`.

    camera.py  viser browser camera <-> head-frame view matrix / intrinsics (pure numpy)
    clips.py   audio clips: `--audio-dir` listing, validated uploads in a private temp folder
    server.py  `AvatarViewer`: viser server, GUI, server-side rendering loop, audio sync
"""
