"""The only places the viewer touches viser internals (viser 1.1.1 has no public way for either).

Kept here, small, so a viser upgrade breaks (and is fixed) in one file:
- `dom_id`: the DOM id of a GUI element. The audio element clicks the hidden sync button by id
  (viewer/static/audio_sync.js); viser exposes no public id for a handle.
- `install_upload_limit`: viser buffers any upload in memory whole and has no size limit nor a public
  hook on the "upload announced" message, so the limit is enforced by handlers on its websocket messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def dom_id(handle: Any) -> str:
    """DOM id of a viser GUI handle (private `_impl.uuid`: no public accessor in viser 1.1.1)."""
    return handle._impl.uuid


def install_upload_limit(server: Any, limit: int, client_of: Callable[[int], Any],
                         refused: Callable[[int, str, int], None]) -> None:
    """Refuse uploads over `limit` bytes when the transfer is announced, before its bytes are buffered.

    viser's own handlers for the announce / part messages are registered first, so ours run right after
    and drop the transfer state (later parts are then ignored by viser). The browser's upload spinner
    waits for acks of every byte, so a final ack is sent; `refused(client_id, filename, size)` then tells
    the user why. `client_of(client_id)` returns that browser's viser ClientHandle (or None)."""
    from viser import _messages as vm

    gui = server.gui
    ws = server._websock_server

    def on_start(client_id, msg) -> None:
        if msg.size_bytes > limit:
            gui._current_file_upload_states.pop(msg.transfer_uuid, None)
            client = client_of(client_id)
            if client is not None:
                client._websock_connection.queue_message(vm.FileTransferPartAck(
                    source_component_uuid=msg.source_component_uuid, transfer_uuid=msg.transfer_uuid,
                    transferred_bytes=msg.size_bytes, total_bytes=msg.size_bytes))
            refused(client_id, msg.filename, msg.size_bytes)

    def on_part(client_id, msg) -> None:
        st = gui._current_file_upload_states.get(msg.transfer_uuid)
        if st is not None and st["transferred_bytes"] > limit:
            gui._current_file_upload_states.pop(msg.transfer_uuid, None)

    ws.register_handler(vm.FileTransferStartUpload, on_start)
    ws.register_handler(vm.FileTransferPart, on_part)
