"""Video -> dataset folder (installed as `avatar.preprocess`). See avatar/dataset.py for the layout."""
