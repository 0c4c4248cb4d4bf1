"""The viewer's GUI panel (viser widgets and their callbacks), built for an `AvatarViewer` (viewer/server.py)."""

from __future__ import annotations

from avatar.viewer.clips import format_bytes
from avatar.viewer.static import hide_sync_css
from avatar.viewer.viser_compat import dom_id

from avatar.errors import AvatarError


def build_gui(v) -> None:
    """Add the Audio / Head / View folders to `v.server` and wire their callbacks to viewer `v`."""
    gui = v.server.gui
    with gui.add_folder("Audio"):
        labels = v.clips.labels
        v._clip_dropdown = gui.add_dropdown("Clip", tuple(labels) or ("(none)",),
                                            hint="clips from --audio-dir and uploads")
        v._upload = gui.add_upload_button(
            "Upload audio", icon=None, mime_type="audio/*",
            hint=f"wav/mp3/flac/ogg/m4a, up to {format_bytes(v.clips.max_upload_bytes)}")
        v._play_button = gui.add_button("Play")
        v._stop_button = gui.add_button("Stop")
        v._status = gui.add_markdown("")
        v._audio_html = gui.add_html("")
        # Not for people: clicked by the <audio> element's `playing` handler (see play()).
        v._sync_button = gui.add_button("audio sync")
        v._hide_sync_css = hide_sync_css(dom_id(v._sync_button))
        v._hide_sync = gui.add_html(v._hide_sync_css)
    with gui.add_folder("Head"):
        v._yaw = gui.add_slider("Yaw (deg)", -60.0, 60.0, 1.0, 0.0)
        v._pitch = gui.add_slider("Pitch (deg)", -45.0, 45.0, 1.0, 0.0)
        v._roll = gui.add_slider("Roll (deg)", -45.0, 45.0, 1.0, 0.0)
        v._blink = gui.add_slider("Blink", 0.0, 1.0, 0.01, round(v._default_blink, 2))
        v._lip = gui.add_slider("Lip scale", 0.0, 2.0, 0.05, 1.0)
    with gui.add_folder("View"):
        full = int(getattr(v, "output_height", v.avatar.height))  # the source clip's height by default
        hi = max(64, min(2048, full * 2))
        v._res = gui.add_slider("Resolution (px)", 64, hi, 16, max(64, int(round(full / 16)) * 16),
                                hint="render height; the adaptive factor lowers it while moving")
        v._adaptive = gui.add_checkbox("Adaptive resolution", True)
        v._torso = gui.add_checkbox("Torso", True)
        v._background = gui.add_checkbox("Background plate", True)
        v._show_centres = gui.add_checkbox("Gaussian centres", False, disabled=v._points is None)
        v._reset = gui.add_button("Reset camera")

    for h in (v._blink, v._lip, v._res, v._adaptive, v._torso, v._background):
        h.on_update(lambda _e: v._mark_all_dirty())
    for h in (v._yaw, v._pitch, v._roll):
        h.on_update(lambda _e: v._on_head_offset())

    @v._show_centres.on_update
    def _(_e) -> None:
        if v._points is not None:
            v._points.visible = bool(v._show_centres.value)

    @v._reset.on_click
    def _(e) -> None:
        if e.client is not None:
            v._reset_camera(e.client)

    @v._play_button.on_click
    def _(e) -> None:
        label = v._clip_dropdown.value
        if label not in v.clips.labels:
            v._notify_client(e.client, "No clip", "choose a clip or upload one first")
            return
        v._set_status(f"preparing {label} ...")
        try:
            v.play(label)
        except AvatarError as err:
            v._set_status("")
            v._notify_client(e.client, "Cannot play", str(err))

    @v._sync_button.on_click
    def _(e) -> None:
        v._on_audio_started(e.client_id)

    @v._stop_button.on_click
    def _(_e) -> None:
        v.stop_playback()
        v._set_status("stopped")

    @v._clip_dropdown.on_update
    def _(e) -> None:
        label = v._clip_dropdown.value
        if label in v.clips.labels and label not in v._prepared:
            v._set_status(f"preparing {label} ...")
            try:
                v.prepare(label)
                v._set_status(f"ready: {label} ({v.clips.get(label).duration:.1f} s)"
                              + (f" — {v.feature_warning}" if v.feature_warning else ""))
            except AvatarError as err:
                v._set_status("")
                v._notify_client(e.client, "Cannot use clip", str(err))

    @v._upload.on_upload
    def _(e) -> None:
        f = v._upload.value
        try:
            label = v.add_upload(f.name, f.content)
            v._set_status(f"uploaded: {label}")
        except AvatarError as err:
            v._notify_client(e.client, "Upload refused", str(err))
