"""Bulk rendering and training on Ray: `avatar batch speak` / `avatar batch fit` (issue 16).

    from avatar.batch import audio_dir_jobs, read_manifest, run_speak_batch
    jobs = read_manifest("jobs.jsonl", Path("out"), defaults={})
    report = run_speak_batch(jobs, "out", workers=2)          # embedded local Ray, started and stopped here
    report = run_speak_batch(jobs, "out", address="ray://head:10001")   # the same jobs on a cluster

Modules: jobs.py (manifest / audio folder -> jobs, options -> SpeakConfig, job keys), state.py (what
counts as complete, sidecars, the report), cluster.py (embedded loopback Ray or a cluster), speak.py
(actor pool running the one engine, `avatar.engine.Speaker`), fit.py (one Ray task per avatar to train).
Layer 6 (tests/test_layers.py): it uses the engine, preprocess and train, never the CLI; Ray is imported
only when a batch runs.
"""

from __future__ import annotations

_EXPORTS = {"SpeakJob": "avatar.batch.jobs", "read_manifest": "avatar.batch.jobs", "audio_dir_jobs": "avatar.batch.jobs",
            "speak_config": "avatar.batch.jobs", "run_speak_batch": "avatar.batch.speak", "run_fit_batch": "avatar.batch.fit",
            "format_table": "avatar.batch.state", "is_complete": "avatar.batch.state"}

EXIT_OK = 0
"""Every job done or skipped."""
EXIT_SOME_FAILED = 3
"""At least one job failed (the others finished); the report says which and why."""


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avatar.batch' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["EXIT_OK", "EXIT_SOME_FAILED"]
