"""The masks stage: a label map per frame (masks/%06d.png) and the static background plate.

Frames are cut into runs of consecutive frames that worker processes label in turn (`MaskPool`), or
one in-process `_MaskWorker` with `threads` 1; runs are merged in frame order so the outputs do not
depend on the worker count or timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from avatar.core.dataset_format import MASK_LABELS
from avatar.errors import AvatarError
from avatar.preprocess.stages import StageContext, _clear_dir, _read_rgb


class _MaskWorker:
    """The masks stage's work on a run of consecutive frames (one worker per process or thread, each
    with its own MaskSegmenter): read each frame, label it, write masks/%06d.png, count the labels
    present and accumulate the frames' share of the background plate (a `BackgroundPart`, merged in
    frame order by the stage, so the plate is the same as a sequential pass)."""

    def __init__(self, out: Path, height: int, width: int, num_frames: int, seg: Any = None):
        import cv2

        from avatar.preprocess.background import BackgroundAccumulator
        from avatar.preprocess.masks import MaskSegmenter

        self.out, self.h, self.w = Path(out), int(height), int(width)
        self.lm = np.load(self.out / "landmarks.npy")
        self.bg = BackgroundAccumulator(self.h, self.w)  # same settings as the stage's accumulator
        self.plan = self.bg.reservoir_plan(num_frames)
        self.seg = MaskSegmenter() if seg is None else seg
        self.png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10: no row filter, 4x faster to write (and read)
            self.png += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]

    def run(self, start: int, stop: int) -> tuple[np.ndarray, Any]:
        """Frames [start, stop) -> (frames in which each label is present [L] int64, BackgroundPart)."""
        import cv2

        nlab = len(MASK_LABELS)
        masks = self.out / "masks"
        counts = np.zeros(nlab, np.int64)
        part = self.bg.part(start, stop, self.plan)
        self.seg.reset()  # each run starts afresh (temporal smoothing, if on, never crosses runs)
        for k in range(start, stop):
            rgb = _read_rgb(self.out / "frames" / f"{k:06d}.jpg")
            labels = self.seg(rgb, self.lm[k])
            hist = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel() if labels.dtype == np.uint8 else None
            if labels.shape != (self.h, self.w) or hist is None or hist[nlab:].any():
                raise AvatarError(f"{masks}: mask of frame {k} is {labels.dtype} {labels.shape} with labels up to "
                                  f"{labels.max()} (MASK_LABELS has {nlab}); re-run with --force masks")
            if not cv2.imwrite(str(masks / f"{k:06d}.png"), labels, self.png):
                raise AvatarError(f"{masks}: could not write a mask (disk full or folder not writable?)")
            counts += hist[:nlab] > 0
            if part.uses(k):
                part.add(rgb, labels)
            else:
                part.skip()
        return counts, part

    def close(self) -> None:
        self.seg.close()


_PROC: dict[str, Any] = {}  # state of a masks worker process: its MaskSegmenter, the shared counter, the queue


def _mask_proc_init(next_run: Any, results: Any) -> None:
    """Start of a masks worker process: the imports and the MediaPipe graph (~1 s of CPU)."""
    import cv2

    from avatar.preprocess.masks import MaskSegmenter

    cv2.setNumThreads(1)  # one worker per core already
    results.cancel_join_thread()  # never block exit on unread results (error paths; all are read otherwise)
    _PROC.update(seg=MaskSegmenter().open(), next_run=next_run, results=results)


def _mask_proc_ready() -> bool:
    return "seg" in _PROC


def _mask_proc_loop(out: str, height: int, width: int, runs: list[tuple[int, int]]) -> int:
    """Take runs off the shared counter until none is left, putting (run index, label counts,
    BackgroundPart) on the results queue for each; -> number of runs done.

    The workers pull work themselves and results go through a queue: handing out runs from the
    parent would need its GIL, which the side stages hold for long stretches (workers sat idle)."""
    next_run, results = _PROC["next_run"], _PROC["results"]
    wk = _MaskWorker(Path(out), height, width, runs[-1][1], seg=_PROC["seg"])
    done = 0
    try:
        while True:
            with next_run.get_lock():
                i = next_run.value
                next_run.value += 1
            if i >= len(runs):
                return done
            c, part = wk.run(*runs[i])
            results.put((i, c, part))
            done += 1
    except BaseException:
        with next_run.get_lock():  # make the other workers stop soon
            next_run.value = len(runs)
        raise


class MaskPool:
    """`workers` masks worker processes, started at once (spawned: a fresh interpreter each, as fork is
    unsafe with the threads MediaPipe and torch leave behind; starting them before decode, whose CPU
    is not saturated, was measured no faster end to end). `run` hands them one masks stage, `close`
    reaps them (so their CPU time counts in RUSAGE_CHILDREN)."""

    def __init__(self, workers: int):
        import concurrent.futures as cf
        import multiprocessing as mp

        mpc = mp.get_context("spawn")
        self.workers = int(workers)
        self.next_run = mpc.Value("i", 0)
        self.results = mpc.Queue()
        self.pool: Any = cf.ProcessPoolExecutor(self.workers, mp_context=mpc, initializer=_mask_proc_init,
                                                initargs=(self.next_run, self.results))
        self._warm = [self.pool.submit(_mask_proc_ready) for _ in range(self.workers)]  # spawns the processes now

    def run(self, out: Path, height: int, width: int, runs: list[tuple[int, int]],
            consume: Callable[[int, np.ndarray, Any], None]) -> None:
        """Label every run; `consume(run index, label counts, BackgroundPart)` is called here, in this
        thread, for each run as it arrives (in any order)."""
        import concurrent.futures as cf
        import queue

        if self.pool is None:
            raise AvatarError("masks worker pool is closed")
        try:
            for f in self._warm:
                f.result()  # a worker that failed to start fails here
            with self.next_run.get_lock():
                self.next_run.value = 0
            futures = [self.pool.submit(_mask_proc_loop, str(out), height, width, runs) for _ in range(self.workers)]
            got, idle = 0, 0.0
            while got < len(runs):
                try:
                    item = self.results.get(timeout=0.5)
                except queue.Empty:
                    for f in futures:
                        if f.done():
                            f.result()  # re-raise a worker's error here
                    idle = idle + 0.5 if all(f.done() for f in futures) else 0.0
                    if idle > 60.0:
                        raise AvatarError(f"{out / 'masks'}: mask workers finished but {len(runs) - got} of "
                                          f"{len(runs)} runs never arrived; re-run with --force masks") from None
                    continue
                consume(*item)
                got += 1
            for f in futures:
                f.result()
        except cf.process.BrokenProcessPool as e:
            raise AvatarError(f"{out / 'masks'}: a mask worker process died ({e}; out of memory?); re-run with "
                              f"--threads 1 or free some memory") from None
        finally:
            with self.next_run.get_lock():
                self.next_run.value = len(runs)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
            self.results.close()


def stage_masks(ctx: StageContext) -> dict[str, Any]:
    """Label maps per frame (masks/%06d.png) and the static background plate (background.png).

    With `cfg.threads` > 1 the frames are cut into runs of consecutive frames that `cfg.threads`
    worker processes take in turn (processes, not threads: labelling is partly Python, and the side
    stages running meanwhile hold the GIL for long stretches); each run yields its label counts and
    background share, merged here in frame order, so the outputs do not depend on the worker count
    or timing.
    """
    import cv2
    from tqdm import tqdm

    from avatar.core.io import atomic_path
    from avatar.preprocess.background import BackgroundAccumulator

    d = ctx.summaries["decode"]
    h, w = d["height"], d["width"]
    n = d["num_frames"]
    masks = ctx.out / "masks"
    _clear_dir(masks, "*.png")
    masks.mkdir(parents=True, exist_ok=True)
    nlab = len(MASK_LABELS)
    counts = np.zeros(nlab, np.int64)  # frames in which each label is present
    bg = BackgroundAccumulator(h, w)
    workers = max(1, int(ctx.cfg.threads))
    size = int(np.clip(n // (8 * workers), 8, 32))  # frames per run: small runs balance the workers' ends
    runs = [(a, min(n, a + size)) for a in range(0, n, size)]
    workers = min(workers, len(runs))
    with tqdm(total=n, desc="masks", unit="frame", disable=not ctx.progress, leave=False) as bar:
        if workers == 1:
            wk = _MaskWorker(ctx.out, h, w, n)
            try:
                for a, b in runs:
                    c, part = wk.run(a, b)
                    counts += c
                    bg.merge(part)
                    bar.update(b - a)
            finally:
                wk.close()
        else:
            held: dict[int, tuple[np.ndarray, Any]] = {}  # runs that arrived before an earlier one
            nxt = 0

            def consume(i: int, c: np.ndarray, part: Any) -> None:  # merge in frame order
                nonlocal nxt, counts
                held[i] = (c, part)
                while nxt in held:
                    c, part = held.pop(nxt)
                    counts += c
                    bg.merge(part)
                    bar.update(part.stop - part.start)
                    nxt += 1

            pool = MaskPool(workers)
            try:
                pool.run(ctx.out, h, w, runs, consume)
            finally:
                pool.close()  # reaped now, so the workers' CPU time counts for this stage
            if nxt != len(runs):
                raise AvatarError(f"{masks}: {nxt} of {len(runs)} runs of frames merged; re-run with --force masks")
    plate = bg.finish()
    if plate.shape != (h, w, 3):
        raise AvatarError(f"{ctx.out / 'background.png'}: plate has shape {plate.shape}; re-run with --force masks")
    with atomic_path(ctx.out / "background.png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    share = {name: float(counts[i] / n) for name, i in MASK_LABELS.items()}
    if share["face"] < 1.0 - ctx.cfg.max_missing_share:
        raise AvatarError(f"{masks}: face region empty in {100 * (1 - share['face']):.0f}% of frames; "
                          f"check the video (--preview) and re-run with --force masks")
    return {"label_frame_share": share, "background": {k: float(v) for k, v in getattr(bg, "stats", {}).items()}}
