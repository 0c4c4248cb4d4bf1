"""Interactive web viewer (installed as `avatar.viewer`)."""
