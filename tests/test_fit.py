"""`avatar fit` on the tiny synthetic dataset: preset smoke runs, resume, faults, configs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from avatar.core.config import apply_overrides, load_yaml, to_dict
from avatar.errors import AvatarError
from avatar.testing import make_tiny_dataset
from avatar.train import trainer as trainer_mod
from avatar.train.checkpoint import list_checkpoints, load_latest, save_checkpoint
from avatar.train.config import FitConfig
from avatar.train.presets import CONFIG_DIR, PRESETS, get_preset
from avatar.train.trainer import Trainer, fit


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinydata"), num_frames=24, size=64)


def _quiet():
    warnings.filterwarnings("ignore", message=".*backend.*")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_two_iteration_smoke(name, tiny_data, tmp_path):
    _quiet()
    cfg = apply_overrides(get_preset(name), {"iters": "2", "device": "cpu", "eval_every": "0", "ckpt_every": "0",
                                             "final_eval": "true" if name == "tiny" else "false"})
    run = tmp_path / name
    metrics = fit(cfg, tiny_data, run, progress=False)
    assert (run / "model.pt").is_file() and (run / "checkpoints").is_dir()
    assert metrics["iters"] == 2 and metrics["num_gaussians"] > 0
    saved = load_yaml(FitConfig, run / "config.yaml")
    assert to_dict(saved) == to_dict(cfg)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["fit_time_s"] >= 0
    if name == "tiny":
        for key in ("head_psnr", "full_psnr", "head_ssim", "lmd"):
            assert key in on_disk
        assert 5 < on_disk["full_psnr"] < 60
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())


def _field_names(cls, prefix=""):
    """Dotted names of every leaf field of a config dataclass, and the classes of the nested ones."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    names, classes = [], [cls]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            sub, sub_classes = _field_names(hints[f.name], prefix + f.name + ".")
            names += sub
            classes += sub_classes
        else:
            names.append(prefix + f.name)
    return names, classes


def _leaf_keys(d, prefix=""):
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k]
    return out


def test_presets_are_the_complete_yaml_files_in_configs():
    """configs/NAME.yaml is the one source of each preset: the file names every FitConfig field (no
    silent defaults), nothing else, and `get_preset` returns exactly what the file says."""
    import yaml

    assert CONFIG_DIR.name == "configs" and set(PRESETS) == {"cpu", "gpu", "tiny"}
    fields, _ = _field_names(FitConfig)
    for name in PRESETS:
        raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        assert sorted(_leaf_keys(raw)) == sorted(fields), name
        cfg = get_preset(name)
        assert isinstance(cfg, FitConfig) and to_dict(cfg) == raw, name
        assert to_dict(get_preset(str(CONFIG_DIR / f"{name}.yaml"))) == raw  # by path too
    # what the presets are for (their header comments): cpu 128 px on the CPU, gpu at the dataset's size
    cpu, gpu = get_preset("cpu"), get_preset("gpu")
    assert (cpu.device, cpu.data.resolution, cpu.model.sh_degree) == ("cpu", 128, 1)
    assert (gpu.data.resolution, gpu.model.sh_degree) == (0, 2)


def test_every_config_field_has_a_help_line():
    """Every field of the fit and preprocess configs carries a docstring (it becomes its --help line)."""
    import dataclasses

    from avatar.core.config import field_docs
    from avatar.preprocess.config import PreprocessConfig

    for root in (FitConfig, PreprocessConfig):
        for cls in _field_names(root)[1]:
            missing = [f.name for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
            assert not missing, f"{cls.__name__}: no docstring under {missing}"


def test_resolution_is_the_long_side_in_preprocessing_and_training():
    """One meaning of `resolution`: 1920x1080 at 480 is 480x270 (scale 1/4) for the dataset frames and
    for training; a square frame is unchanged in both; never upscaled."""
    from avatar.core.dataset_format import render_size
    from avatar.preprocess.decode import target_size

    assert target_size(1920, 1080, 480) == (480, 270)
    assert render_size(1920, 1080, 480) == (480, 270, 0.25)
    assert target_size(1080, 1920, 480) == (270, 480) and render_size(1080, 1920, 480)[:2] == (270, 480)
    assert target_size(512, 512, 256) == (256, 256) and render_size(512, 512, 256)[:2] == (256, 256)
    assert target_size(640, 360, 1024) == (640, 360) and render_size(640, 360, 1024) == (640, 360, 1.0)
    assert render_size(640, 360, 0) == (640, 360, 1.0)


def test_unknown_config_field_is_a_one_line_error():
    with pytest.raises(AvatarError, match="no field 'model.bogus'"):
        apply_overrides(get_preset("tiny"), {"model.bogus": "1"})
    with pytest.raises(AvatarError, match="did you mean"):
        apply_overrides(get_preset("tiny"), {"iter": "1"})
    with pytest.raises(AvatarError, match="unknown preset"):
        get_preset("nope")


def _tiny_cfg(**over):
    base = {"iters": "8", "ckpt_every": "4", "eval_every": "0", "final_eval": "false", "log_every": "1",
            "strategy.refine_start": "2", "strategy.refine_every": "3", "strategy.refine_stop": "7", "optim.warmup": "2"}
    base.update({k: str(v) for k, v in over.items()})
    return apply_overrides(get_preset("tiny"), base)


def _flat_state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in tr.model.state_dict().items()}
    for name, opt in (("g", tr.gauss_opt), ("n", tr.net_opt)):
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                out[f"{name}.{pid}.{k}"] = torch.as_tensor(v).clone()
    return out


def test_resume_after_interruption_continues_with_the_same_state(tiny_data, tmp_path, monkeypatch):
    _quiet()
    torch.set_num_threads(1)  # deterministic reductions for the bitwise comparison
    cfg = _tiny_cfg()
    ref = Trainer(cfg, tiny_data, tmp_path / "ref", progress=False)
    ref.cfg = apply_overrides(ref.cfg, {"final_eval": "false"})
    for _ in range(8):
        ref.train_step()
        if ref.step == 4:
            state_at_4 = _flat_state(ref)
            rng_at_4 = (torch.get_rng_state().clone(), ref.rng.bit_generator.state, ref.order.copy(), ref.order_pos)
    ref_final = _flat_state(ref)

    # interrupted run: Ctrl-C during step 5 -> checkpoint at step 4 -> re-run resumes
    real_step = Trainer.train_step

    def interrupting(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tiny_data, tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")][-1] == 4
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = Trainer(cfg, tiny_data, tmp_path / "run", progress=False)
    assert resumed.step == 4
    st = _flat_state(resumed)
    assert st.keys() == state_at_4.keys()
    for k in st:
        torch.testing.assert_close(st[k], state_at_4[k], rtol=0, atol=0, msg=k)
    assert torch.equal(torch.get_rng_state(), rng_at_4[0])
    assert resumed.rng.bit_generator.state == rng_at_4[1]
    assert np.array_equal(resumed.order, rng_at_4[2]) and resumed.order_pos == rng_at_4[3]
    while resumed.step < 8:
        resumed.train_step()
    fin = _flat_state(resumed)
    assert fin.keys() == ref_final.keys()
    for k in fin:
        torch.testing.assert_close(fin[k], ref_final[k], rtol=1e-5, atol=1e-6, msg=k)


def test_nan_loss_steps_are_skipped_then_training_stops(tiny_data, tmp_path, monkeypatch):
    _quiet()
    real = trainer_mod.compute_loss
    calls = {"n": 0}

    def sometimes_nan(out, batch, cfg):
        calls["n"] += 1
        loss, terms = real(out, batch, cfg)
        if calls["n"] in (2, 3):
            return loss * float("nan"), terms
        return loss, terms

    monkeypatch.setattr(trainer_mod, "compute_loss", sometimes_nan)
    tr = Trainer(_tiny_cfg(iters=5), tiny_data, tmp_path / "a", progress=False)
    before = {k: v.detach().clone() for k, v in tr.model.head.params.items()}
    tr.train_step()
    after1 = {k: v.detach().clone() for k, v in tr.model.head.params.items()}
    with pytest.warns(UserWarning, match="non-finite"):
        assert tr.train_step() is None
    assert all(torch.equal(after1[k], v) for k, v in tr.model.head.params.items())  # skipped: nothing changed
    assert not all(torch.equal(before[k], after1[k]) for k in before)
    with pytest.warns(UserWarning, match="2 in a row"):
        tr.train_step()
    assert tr.train_step() is not None and tr.nan_streak == 0

    monkeypatch.setattr(trainer_mod, "compute_loss", lambda out, batch, cfg: (real(out, batch, cfg)[0] * float("inf"), {}))
    tr2 = Trainer(_tiny_cfg(iters=10, max_nan_steps=3), tiny_data, tmp_path / "b", progress=False)
    with pytest.raises(AvatarError, match="3 non-finite losses in a row"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr2.run()


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, 10, {"step": 10, "x": torch.ones(3)})
    assert good is not None

    def disk_full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match="failed"):
        assert save_checkpoint(tmp_path, 20, {"step": 20}) is None
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert load_latest(tmp_path)["step"] == 10
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left behind


def test_keeps_only_the_last_checkpoints(tmp_path):
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, s, {"step": s}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_audio_lookahead_is_checked_and_reaches_the_training_windows(tiny_data, tmp_path):
    for bad in (-2, 5):  # tiny: 5-row window, look-ahead -1 (centred) or 0..4
        with pytest.raises(AvatarError, match="model.audio_lookahead must be -1") as e:
            Trainer(_tiny_cfg(**{"model.audio_lookahead": bad}), tiny_data, tmp_path / f"bad{bad}", progress=False)
        assert "\n" not in str(e.value)
    tr = Trainer(_tiny_cfg(**{"model.audio_lookahead": 0}), tiny_data, tmp_path / "causal", progress=False)
    assert (tr.data.past, tr.data.future) == (4, 0) and (tr.model.audio.past, tr.model.audio.future) == (4, 0)
    w = tr.data.windows([0, 10])
    torch.testing.assert_close(w[1], tr.data.feats[6:11])  # frame 10 sees rows 6 ... 10
    torch.testing.assert_close(w[0], tr.data.feats[[0, 0, 0, 0, 0]])  # edge padded
    torch.testing.assert_close(tr.data.all_windows()[[0, 10]], w)


def test_incomplete_dataset_is_a_one_line_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(AvatarError, match="incomplete"):
        fit(get_preset("tiny"), tmp_path / "d", tmp_path / "run", progress=False)


def test_fit_cli_on_a_dataset_folder_and_video_reuse(tiny_data, tmp_path, capsys):
    import shutil

    from avatar.cli import main
    from avatar.preprocess.inputs import dataset_for as prepare_dataset

    run = tmp_path / "run"
    assert main(["fit", str(tiny_data), "-o", str(run), "--preset", "tiny", "--iters", "3", "--final_eval", "false",
                 "--no-progress", "--device", "cpu"]) == 0
    assert (run / "model.pt").is_file()
    assert load_yaml(FitConfig, run / "config.yaml").iters == 3
    # re-running a finished run does not train again
    assert main(["fit", str(tiny_data), "-o", str(run), "--preset", "tiny", "--iters", "3", "--final_eval", "false",
                 "--no-progress"]) == 0
    assert "already trained" in capsys.readouterr().out
    # a video whose dataset already sits in RUN/data is not preprocessed again
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    run2 = tmp_path / "run2"
    shutil.copytree(tiny_data, run2 / "data")
    assert prepare_dataset(video, run2) == run2 / "data"
    assert prepare_dataset(tiny_data, run2) == tiny_data
    with pytest.raises(AvatarError, match="no such video"):
        prepare_dataset(tmp_path / "missing.mp4", run2)
    assert main(["fit", str(tmp_path / "notes.txt"), "-o", str(run2)]) == 2


def test_point_motion_matches_the_gaussians_it_samples(tiny_data, tmp_path):
    """The landmark loss samples the same field the head Gaussians move with: a point placed at a
    head Gaussian's canonical position moves exactly like that Gaussian."""
    _quiet()
    tr = Trainer(_tiny_cfg(), tiny_data, tmp_path / "run", progress=False)
    m = tr.model
    with torch.no_grad():
        for p in m.face_motion.parameters():  # a non-trivial field (the last layer starts at zero)
            p.normal_(0, 0.5)
        batch = tr.data.batch([0, 3, 7])
        audio = m.audio(batch["feats"])
        d = m.deform(audio, batch["blink"])
        pick = torch.tensor([0, 5, 17])
        x, _ = m.point_motion(m.head.params["means"][pick], audio, batch["blink"])
    assert float((d["means"][:, pick] - m.head.params["means"][pick]).abs().max()) > 1e-4  # it does move
    torch.testing.assert_close(x, d["means"][:, pick], rtol=1e-5, atol=1e-6)


def test_landmark_motion_loss_teaches_the_audio_to_open_the_mouth(tiny_data, tmp_path):
    """On the synthetic clip the lower lip's landmarks move with the 'audio' opening. Training the
    networks on the landmark motion loss alone must (a) cut the landmark error well below the rigid
    (no-motion) error and (b) make the field's lower-lip displacement follow the opening."""
    _quiet()
    tr = Trainer(_tiny_cfg(), tiny_data, tmp_path / "run", progress=False)
    data, m = tr.data, tr.model
    frames = np.asarray(data.train_idx)

    def lip_px() -> tuple[float, np.ndarray]:
        with torch.no_grad():
            _, terms = trainer_mod.landmark_motion_loss(m, data, frames, tr.lm_canon, tr.lm_mouth_canon, 0.3)
            x, _ = m.point_motion(tr.lm_canon, m.audio(data.windows(frames)), data.blink[torch.as_tensor(frames)])
        return terms["landmark_px"], (x - tr.lm_canon[None]).norm(dim=-1).mean(-1).numpy()

    before, _ = lip_px()
    opt = torch.optim.Adam([p for mod in (m.face_motion, m.mouth_motion, m.audio) for p in mod.parameters()], lr=3e-3)
    for _ in range(250):
        sel = tr.rng.choice(frames, 8)
        loss, _ = trainer_mod.landmark_motion_loss(m, data, sel, tr.lm_canon, tr.lm_mouth_canon, 0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, motion = lip_px()
    opening = np.asarray(data.feats[torch.as_tensor(frames), 0])
    assert after < 0.5 * before, (before, after)
    assert np.corrcoef(motion, opening)[0, 1] > 0.8
