"""`avatar batch speak` on a local Ray with 2 workers (issue 16): same output as `avatar speak`, a killed worker,
an interrupted driver and bad inputs.

The avatar is the tiny test run (`avatar.testing.make_tiny_run`, 64 px, 25 fps); the audio is real speech from
../shared/data/audio cut to 2-3 s. Known values: a clip of S seconds at the run's 25 fps renders round(25 S)
frames (the frame-exactness contract of `avatar speak`). Every Ray process started here carries an environment
tag; the module's Ray fixture checks at teardown that none is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from avatar.cli import main as cli
from tests.conftest import shared_file

TAG = f"avatar-batch-test-{uuid.uuid4().hex[:8]}"
os.environ["AVATAR_BATCH_TEST_TAG"] = TAG  # inherited by every Ray process (and the driver subprocess)
FPS = 25
AUDIOS = ("dreamtalk_french1", "geneface_zozo", "sadtalker_deyu", "sadtalker_imagine", "sadtalker_japanese",
          "sadtalker_chinese_news")


_BEFORE: set[int] = set()
"""Tagged processes alive when this module's tests began: helpers other tests of the session left running (a
multiprocessing forkserver of the preprocessing, say) inherit TAG from this process but are not Ray's."""


@pytest.fixture(scope="module", autouse=True)
def _note_earlier_processes():
    _BEFORE.update(_tagged_pids())


def _tagged_pids() -> list[int]:
    """Live processes whose environment carries TAG (Ray's gcs/raylet/workers and drivers started here)."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me or int(d.name) in _BEFORE:
            continue
        try:
            if TAG.encode() in (d / "environ").read_bytes() and "Z" not in (d / "stat").read_text().split(")")[-1][:3]:
                out.append(int(d.name))
        except OSError:
            continue
    return out


@pytest.fixture(scope="module")
def ray_local():
    """One embedded loopback Ray with 2 CPUs for the in-process batches (the command reuses it); always shut down."""
    from avatar.batch.cluster import LOOPBACK, import_ray

    ray = import_ray(local=True)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address=LOOPBACK, logging_level="ERROR", log_to_driver=False)
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()
        deadline = time.time() + 30
        while _tagged_pids() and time.time() < deadline:
            time.sleep(0.5)
        assert _tagged_pids() == [], "Ray processes left after shutdown"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from avatar.testing import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("batch") / "run")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Real speech cut to 2 s (first three) and 3 s (the rest), as 16 kHz wav."""
    import soundfile as sf

    from avatar.core.audio import load_audio

    d = tmp_path_factory.mktemp("clips")
    out = {}
    for i, name in enumerate(AUDIOS):
        secs = 2 if i < 3 else 3
        wav = load_audio(shared_file(f"audio/{name}.wav"), sr=16000)[: 16000 * secs]
        assert wav.shape[0] == 16000 * secs
        sf.write(str(d / f"{name}.wav"), wav, 16000)
        out[name] = d / f"{name}.wav"
    return out


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # [N, H, W, 3]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    return path


def _report(outdir: Path) -> dict:
    return json.loads((outdir / "batch_report.json").read_text())


def test_interrupted_driver_then_rerun_skips_completed(tiny_run, clips, tmp_path):
    """SIGTERM of a running `avatar batch speak` (its own embedded Ray): exit 130, no partial or hidden temp file,
    no Ray process left; the rerun skips exactly the jobs with a complete output and renders the rest."""
    from avatar.batch import is_complete

    entries = [{"run": str(tiny_run), "audio": str(clips[n]), "output": f"{n}.mp4"} for n in AUDIOS[3:]]
    entries += [{"run": str(tiny_run), "audio": str(clips[n]), "output": f"again_{n}.mp4", "seed": 1} for n in AUDIOS[3:]]
    m = _manifest(tmp_path / "jobs.jsonl", entries)
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ADDRESS="")
    proc = subprocess.Popen([sys.executable, "-m", "avatar.cli", "batch", "speak", "--manifest", str(m), "-o", str(out),
                             "--workers", "2", "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 150
        while not list((out / ".batch").glob("*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read().decode()[-2000:]
    time.sleep(1.0)
    assert list(out.glob(".*.tmp*")) == []  # hidden temporaries of in-flight renders removed
    done_before = sorted(p.name[:-5] for p in (out / ".batch").glob("*.json"))
    assert 1 <= len(done_before) < len(entries)
    for mp4 in out.glob("*.mp4"):  # any output under its final name is whole: 3 s x 25 fps
        assert len(_frames(mp4)) == 3 * FPS
    report = _report(out)
    assert report["counts"].get("interrupted", 0) >= 1
    deadline = time.time() + 30
    while _tagged_pids() and time.time() < deadline:  # the driver's embedded Ray went down with it
        time.sleep(0.5)
    assert _tagged_pids() == []

    assert cli(["batch", "speak", "--manifest", str(m), "-o", str(out), "--workers", "2", "--no-progress"]) == 0
    report = _report(out)
    rows = {r["name"]: r for r in report["jobs"]}
    assert sorted(n for n, r in rows.items() if r["status"] == "skipped") == done_before
    assert sorted(n for n, r in rows.items() if r["status"] == "done") == sorted(set(rows) - set(done_before))
    for r in rows.values():
        assert len(_frames(Path(r["output"]))) == 3 * FPS

    # a broken output (truncated after the fact) is not complete and is redone by the next rerun
    victim = Path(rows[done_before[0]]["output"])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    key_meta = json.loads((out / ".batch" / (done_before[0] + ".json")).read_text())
    assert is_complete(out, done_before[0], victim, key_meta["key"]) is None


def test_batch_equals_single_speak(ray_local, tiny_run, clips, tmp_path, capsys):
    """Each job's frames equal `avatar speak`'s for the same audio and options, bit for bit (workers run 1 thread
    with Ray's OMP_NUM_THREADS=1, this process all cores: see test_speak_engine's thread-count test)."""
    jobs = [({}, AUDIOS[0]), ({"yaw": 8, "lip-scale": 1.3}, AUDIOS[1]), ({"pose": "static", "background": "green"}, AUDIOS[2]),
            ({}, AUDIOS[2])]
    entries = [{"run": str(tiny_run), "audio": str(clips[a]), "output": f"job{i}.mp4", **o} for i, (o, a) in enumerate(jobs)]
    out = tmp_path / "out"
    rc = cli(["batch", "speak", "--manifest", str(_manifest(tmp_path / "m.jsonl", entries)), "-o", str(out), "--workers", "2",
              "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "4 done" in table and "job3.mp4" in table
    report = _report(out)
    assert report["counts"] == {"done": 4} and report["workers"] == 2
    cli_flags = {"yaw": "--yaw", "lip-scale": "--lip-scale", "pose": "--pose", "background": "--background"}
    for i, (opts, audio) in enumerate(jobs):
        single = tmp_path / f"single{i}.mp4"
        args = ["speak", str(tiny_run), "--audio", str(clips[audio]), "-o", str(single)]
        for k, v in opts.items():
            args += [cli_flags[k], str(v)]
        assert cli(args) == 0
        a, b = _frames(out / f"job{i}.mp4"), _frames(single)
        assert a.shape == b.shape == (2 * FPS, 64, 64, 3)
        assert np.array_equal(a, b), f"job{i}: PSNR {_psnr(a, b):.1f} dB against avatar speak"
    row = report["jobs"][0]
    assert row["frames"] == 2 * FPS and row["render_fps"] > 0


def test_killed_worker_job_is_retried(ray_local, tiny_run, clips, tmp_path):
    """SIGKILL of the worker rendering the first job: the job runs again on a fresh worker; every output is valid."""
    from avatar.batch import is_complete, read_manifest, run_speak_batch

    entries = [{"run": str(tiny_run), "audio": str(clips[a]), "output": f"k{i}.mp4"} for i, a in enumerate(AUDIOS[:3])]
    entries.append({"run": str(tiny_run), "audio": str(clips[AUDIOS[0]]), "output": "k3.mp4", "seed": 3})
    out = tmp_path / "out"
    jobs = read_manifest(_manifest(tmp_path / "m.jsonl", entries), out, {})
    killed: list[tuple[str, int]] = []

    def kill_first(name: str, pid: int) -> None:
        if not killed:
            killed.append((name, pid))
            os.kill(pid, signal.SIGKILL)

    report = run_speak_batch(jobs, out, workers=2, progress=False, on_dispatch=kill_first)
    assert killed
    assert report["counts"] == {"done": 4}
    assert report["worker_restarts"] >= 1
    rows = {r["name"]: r for r in report["jobs"]}
    assert rows[killed[0][0]]["attempts"] == 2 and rows[killed[0][0]]["pid"] != killed[0][1]
    for r in rows.values():
        assert len(_frames(Path(r["output"]))) == 2 * FPS
    assert list(out.glob(".*.tmp*")) == []


def test_bad_inputs_fail_alone(ray_local, tiny_run, clips, tmp_path):
    """Missing audio, corrupt audio, unknown option, missing run: each fails with its reason; the rest are done; exit 3."""
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    good = {"run": str(tiny_run), "audio": str(clips[AUDIOS[0]])}
    entries = [
        good | {"output": "good1.mp4"},
        {"run": str(tiny_run), "audio": str(tmp_path / "nowhere.wav"), "output": "missing_audio.mp4"},
        {"run": str(tiny_run), "audio": str(corrupt), "output": "corrupt.mp4"},
        good | {"output": "unknown_option.mp4", "yawn": 3},
        {"run": str(tmp_path / "no_run"), "audio": str(clips[AUDIOS[1]]), "output": "missing_run.mp4"},
        good | {"output": "good2.mp4", "orbit": 10},
    ]
    out = tmp_path / "out"
    rc = cli(["batch", "speak", "--manifest", str(_manifest(tmp_path / "m.jsonl", entries)), "-o", str(out), "--workers", "2",
              "--no-progress"])
    assert rc == 3
    rows = {r["name"]: r for r in _report(out)["jobs"]}
    assert {n for n, r in rows.items() if r["status"] == "done"} == {"good1.mp4", "good2.mp4"}
    assert "nowhere.wav" in rows["missing_audio.mp4"]["reason"] and "no such audio file" in rows["missing_audio.mp4"]["reason"]
    assert "corrupt.wav" in rows["corrupt.mp4"]["reason"] and "not a readable audio" in rows["corrupt.mp4"]["reason"]
    assert "yawn" in rows["unknown_option.mp4"]["reason"] and "yaw" in rows["unknown_option.mp4"]["reason"].split("yawn")[1]
    assert "no_run" in rows["missing_run.mp4"]["reason"] and "run folder" in rows["missing_run.mp4"]["reason"]
    for r in rows.values():
        assert r["status"] in ("done", "failed") and "\n" not in (r["reason"] or "")
        assert (out / r["name"]).exists() == (r["status"] == "done")


def test_longest_jobs_are_sent_first(tmp_path):
    """Each avatar's jobs go out longest audio first (LPT). For 3, 9, 3, 5, 7 s on 2 workers, given order ends at 16 s
    (the 7 s clip starts at 9 s, alone at the end), longest first at 15 s. Equal lengths keep the order they were
    given in; the avatars' queues stay apart."""
    from avatar.batch.jobs import SpeakJob
    from avatar.batch.speak import _Scheduler, _Slot

    lengths = {"a": 3.0, "b": 9.0, "c": 3.0, "d": 5.0, "e": 7.0, "x": 1.0, "y": 4.0}
    jobs = [SpeakJob(n, "runA" if n < "x" else "runB", f"{n}.wav", str(tmp_path / f"{n}.mp4"), {}) for n in lengths]
    sched = _Scheduler(tmp_path, [(j, None, "k", lengths[j.name]) for j in jobs], {}, 2, None)
    slot = _Slot(actor=None, pid=0, run="runA")
    order = [sched._pick(slot).name for _ in range(5)]
    assert order == ["b", "e", "d", "a", "c"]
    slot.run = "runB"
    assert [sched._pick(slot).name for _ in range(2)] == ["y", "x"]
    assert sched._pick(slot) is None


def test_options_map_to_speak_config():
    """Manifest keys in either spelling reach the same SpeakConfig fields; bad values are one-line errors."""
    from avatar.batch import speak_config
    from avatar.errors import AvatarError

    cfg = speak_config({"lip-scale": "1.5", "no-torso": True, "pose": "audio", "yaw": 10, "feature-model": "m/"})
    assert (cfg.lip_scale, cfg.torso, cfg.pose, cfg.yaw, cfg.feature_model_dir) == (1.5, False, "audio", 10.0, "m/")
    assert speak_config({"lip_scale": 0.5}).lip_scale == 0.5
    for bad, word in (({"orbit": 400}, "orbit"), ({"yaw": "left"}, "yaw"), ({"vad": "loud"}, "vad"), ({"posee": "x"}, "pose")):
        with pytest.raises(AvatarError, match=word):
            speak_config(bad)


def test_bad_command_line_exits_2(tmp_path, capsys):
    assert cli(["batch", "speak", "--manifest", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o")]) == 2
    assert cli(["batch", "speak", "--audio-dir", str(tmp_path), "-o", str(tmp_path / "o")]) == 2  # no RUN
    (tmp_path / "a.wav").write_bytes(b"")
    assert cli(["batch", "speak", str(tmp_path), "--audio-dir", str(tmp_path), "-o", str(tmp_path / "o"), "--yaw", "left"]) == 2
    with pytest.raises(SystemExit) as e:  # argparse: unknown option
        cli(["batch", "speak", "r", "--audio-dir", str(tmp_path), "-o", str(tmp_path / "o"), "--yaww", "1"])
    assert e.value.code == 2


def test_batch_fit_trains_each_input_once(ray_local, tmp_path):
    """Two dataset folders -> two runs (model.pt); a missing input fails alone (exit 3); the rerun skips both."""
    from avatar.testing import make_tiny_dataset

    a = make_tiny_dataset(tmp_path / "anna", num_frames=12, size=48)
    b = make_tiny_dataset(tmp_path / "ben", num_frames=12, size=48, seed=1)
    runs = tmp_path / "runs"
    args = ["batch", "fit", str(a), str(b), "-o", str(runs), "--preset", "tiny", "--iters", "4", "--no-progress"]
    assert cli(args[:4] + [str(tmp_path / "nothing.mp4")] + args[4:]) == 3
    rows = {r["name"]: r for r in _report(runs)["jobs"]}
    assert (rows["anna"]["status"], rows["ben"]["status"], rows["nothing"]["status"]) == ("done", "done", "failed")
    assert "nothing.mp4" in rows["nothing"]["reason"]
    assert (runs / "anna" / "model.pt").is_file() and (runs / "ben" / "model.pt").is_file()
    assert cli(args) == 0
    assert _report(runs)["counts"] == {"skipped": 2}
