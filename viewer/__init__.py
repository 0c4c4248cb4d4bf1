"""Interactive web viewer, started by `avatar view RUN`. Installed as `avatar.viewer` (setup.py's package_dir
maps this folder there: a top-level `viewer` package would collide with other distributions). Layer: it
renders through the one inference engine (`avatar.engine`) and imports `avatar.core`; never training,
evaluation or the CLI (tests/test_layers.py walks the import graph).

    config.py        `ViewerConfig`: the settings of `avatar view` (its options are generated from it)
    server.py        `AvatarViewer`: viser server, clients, server-side rendering loop through the engine
                     (`avatar.engine.Speaker`: speak's features, silence handling and compositing), audio sync
    gui.py           the GUI panel (widgets and callbacks)
    state.py         per-playback / per-browser state, the adaptive-resolution rule, Avatar helpers
    camera.py        viser browser camera <-> head-frame view matrix (maths shared with avatar/core/camera.py)
    clips.py         audio clips: `--audio-dir` listing, validated uploads in a private temp folder
    static.py        fills the HTML/JS/CSS snippets of static/ (shipped as package data)
    viser_compat.py  the only uses of viser internals (no public API for them in viser 1.1.1)
"""
