"""The viewer's HTML/JavaScript/CSS snippets (viewer/static/*, shipped as package data), filled in with
`string.Template` so their braces need no escaping."""

from __future__ import annotations

import functools
import html
from importlib import resources
from string import Template


@functools.cache
def _template(name: str) -> Template:
    return Template(resources.files("avatar.viewer").joinpath("static", name).read_text(encoding="utf-8"))


def audio_element(src: str, nonce: int, sync_id: str, mark: float, period: float) -> str:
    """The `<audio autoplay>` element of a clip. Its inline `onplaying` handler (viser's HTML element
    runs no `<script>`, an attribute handler does) clicks the hidden sync button when playback starts and
    again each time the element's own clock passes a mark (static/audio_sync.js)."""
    js = " ".join(line.strip() for line in _template("audio_sync.js").substitute(
        sync_id=sync_id, mark=mark, period=period).splitlines())
    return _template("audio.html").substitute(nonce=nonce, onplaying=html.escape(js, quote=True), src=src).strip()


def hide_sync_css(sync_id: str) -> str:
    """A `<style>` hiding the sync button's row (it is for the audio element, not for people)."""
    return _template("hide_sync.css").substitute(sync_id=sync_id).strip()
