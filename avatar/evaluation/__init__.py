"""Evaluation: image metrics, held-out reconstruction (`avatar eval`), and lip-sync measures.

Renders through the inference engine (`avatar.engine`); imports nothing of training.
"""
