"""What a run reads and what it writes: inputs are never overwritten, a resume
checks its inputs by content (wherever they now are) and needs no model file,
takes the new LR schedule when `steps` changes, and a few refusals that keep
a run from training nothing."""
import json
import shutil

import pytest
import torch

from vpengine.train import TrainConfig, train
from vpengine.train.config import lr_factor


def _cfg(d, out, stage=1, **kw):
    base = dict(stage=stage, model=str(d / "lvt.safetensors"), manifest=str(d / "m.jsonl"), out_dir=str(out),
                tokenizer=str(d / "spm.model") if stage == 1 else None, frames=4, size=32, batch_size=2,
                dtype="float32", num_workers=1, decoder="pyav", lr=1e-3, decoder_layers=1, mask_ratio=0.5,
                steps=2, log_every=1)
    return TrainConfig(**{**base, **kw})


def _quiet(line):
    pass


def _log(out):
    return (out / "log.jsonl").read_text().splitlines()


@pytest.mark.parametrize("stage", [1, 2])
def test_an_input_that_is_one_of_the_outputs_is_refused_untouched(train_data, tmp_path, stage):
    out = tmp_path / "run"
    out.mkdir()
    model = out / "model.safetensors"  # what the run would replace with its own export
    shutil.copy(train_data / "lvt.safetensors", model)
    before = model.read_bytes()
    with pytest.raises(ValueError, match="one of the run's own outputs"):
        train(_cfg(train_data, out, stage, model=str(model)), log=_quiet)
    assert model.read_bytes() == before and not (out / "checkpoint.pt").exists()


def test_resume_with_more_steps_takes_the_new_schedule_at_once(train_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(train_data, out, steps=2), log=_quiet)  # ends at the cosine's end: lr 0
    longer = _cfg(train_data, out, steps=4)
    train(longer, resume=True, log=_quiet)
    lrs = {json.loads(x)["step"]: json.loads(x)["lr"] for x in _log(out)}
    assert lrs[3] == pytest.approx(1e-3 * lr_factor(2, longer)) and lrs[3] > 0  # the old schedule gave 0
    assert lrs[4] == pytest.approx(1e-3 * lr_factor(3, longer))
    with pytest.raises(ValueError, match="is at step 4; steps 3 is behind it"):
        train(_cfg(train_data, out, steps=3), resume=True, log=_quiet)


def test_resume_compares_input_contents_not_paths(train_data, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    monkeypatch.chdir(data)
    relative = _cfg(train_data, tmp_path / "run", model="lvt.safetensors", manifest="m.jsonl",
                    tokenizer="spm.model")
    train(relative, log=_quiet)
    monkeypatch.chdir(tmp_path)  # the same files, named from elsewhere: the same run
    train(_cfg(data, tmp_path / "run", steps=3), resume=True, log=_quiet)
    rows = (data / "m.jsonl").read_text().splitlines()
    (data / "m.jsonl").write_text("\n".join(rows[:2] + rows[3:]) + "\n")  # one row gone, same name
    with pytest.raises(ValueError, match="manifest contents: 7 rows.* -> 6 rows"):
        train(_cfg(data, tmp_path / "run", steps=4), resume=True, log=_quiet)


def test_a_manifest_of_absolute_paths_moved_alone_is_the_same_run(train_data, tmp_path):
    rows = [json.loads(x) for x in (train_data / "m.jsonl").read_text().splitlines()]
    text = "".join(json.dumps({**r, "path": str(train_data / r["path"])}) + "\n" for r in rows)
    (tmp_path / "a.jsonl").write_text(text)
    train(_cfg(train_data, tmp_path / "run", manifest=str(tmp_path / "a.jsonl")), log=_quiet)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.jsonl").write_text(text)  # the same rows, the same videos
    train(_cfg(train_data, tmp_path / "run", manifest=str(tmp_path / "elsewhere" / "a.jsonl"), steps=3),
          resume=True, log=_quiet)
    assert json.loads(_log(tmp_path / "run")[-1])["step"] == 3


def test_stage2_resumes_without_its_teacher_file(train_data, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    shutil.copy(train_data / "lvt.safetensors", teacher)
    out = tmp_path / "run"
    train(_cfg(train_data, out, 2, model=str(teacher)), log=_quiet)
    teacher.unlink()  # the checkpoint holds the teacher's weights and architecture
    summary = train(_cfg(train_data, out, 2, model=str(teacher), steps=3), resume=True, log=_quiet)
    assert summary["steps"] == 3


def test_resume_compares_the_model_by_content(train_data, tmp_path, lvt_config):
    """A resume refused a byte-identical copy of the model (its path had
    changed) and, once the first file was gone, took any other file."""
    from vpengine.model.api import build, save

    first, copy, other = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    shutil.copy(train_data / "lvt.safetensors", first)
    shutil.copy(first, copy)
    save(build(lvt_config, seed=1), other)  # the same architecture, other weights
    out = tmp_path / "run"
    train(_cfg(train_data, out, model=str(first)), log=_quiet)
    train(_cfg(train_data, out, model=str(copy), steps=3), resume=True, log=_quiet)
    with pytest.raises(ValueError, match="model contents: sha256"):
        train(_cfg(train_data, out, model=str(other), steps=4), resume=True, log=_quiet)
    first.unlink()
    with pytest.raises(ValueError, match="model contents: sha256"):
        train(_cfg(train_data, out, model=str(other), steps=4), resume=True, log=_quiet)
    # No file where --model points: the checkpoint holds the model.
    train(_cfg(train_data, out, model=str(first), steps=4), resume=True, log=_quiet)
    assert json.loads(_log(out)[-1])["step"] == 4


def test_a_preset_name_stays_a_name_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """A folder named after the preset (an earlier run's --out, say) turned
    --model into its path: "unknown preset '/.../videoprism_lvt_public_v1_base'"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "videoprism_lvt_public_v1_base").mkdir()
    (tmp_path / "m.jsonl").write_text("")
    cfg = TrainConfig(stage=1, model="videoprism_lvt_public_v1_base", manifest="m.jsonl", out_dir="o",
                      tokenizer="spm.model", random_init=True)
    moved = cfg.with_absolute_inputs()
    assert moved.model == "videoprism_lvt_public_v1_base" and moved.manifest == str(tmp_path / "m.jsonl")
    assert cfg.differences(moved) == []


def test_config_takes_paths_and_bounds_the_seed(tmp_path):
    import pathlib

    cfg = TrainConfig(stage=1, model=tmp_path / "m.safetensors", manifest=tmp_path / "m.jsonl",
                      out_dir=tmp_path / "o", tokenizer=pathlib.Path("spm.model"))
    assert (cfg.model, cfg.tokenizer) == (str(tmp_path / "m.safetensors"), "spm.model")
    with pytest.raises(ValueError, match=r"seed must be an int >= 0 and <= 9223372036854775807"):
        _cfg(tmp_path, tmp_path / "o", seed=2 ** 64)


def test_an_unknown_decoder_is_named_as_the_option(tmp_path):
    """The loader's own refusal spoke of a "backend", which no option is called."""
    with pytest.raises(ValueError, match=r"TrainConfig\.decoder must be one of 'auto', 'pyav'.*got 'av'"):
        _cfg(tmp_path, tmp_path / "o", decoder="av")
    assert _cfg(tmp_path, tmp_path / "o", decoder="dali-gpu").decoder == "dali-gpu"  # checked where it runs


def test_stage1_refuses_a_single_clip_per_step(train_data, tmp_path):
    with pytest.raises(ValueError, match="at least 2 clips per step"):
        train(_cfg(train_data, tmp_path / "run", batch_size=1), log=_quiet)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_bad_device_or_a_missing_manifest_is_named(train_data, tmp_path):
    with pytest.raises(ValueError, match="device 'gpu' is not a device name"):
        train(_cfg(train_data, tmp_path / "run"), device="gpu", log=_quiet)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            train(_cfg(train_data, tmp_path / "run"), device="cuda", log=_quiet)
    with pytest.raises(FileNotFoundError, match="manifest .*nothere.jsonl not found"):
        train(_cfg(train_data, tmp_path / "run", manifest=str(tmp_path / "nothere.jsonl")), log=_quiet)
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_writing_leaves_no_folder(train_data, tmp_path):
    (tmp_path / "bad.mp4").write_text("not a video")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(tmp_path / "bad.mp4"), "caption": "x"}) + "\n")
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="gave no batch"):
        train(_cfg(train_data, out, manifest=str(tmp_path / "m.jsonl")), log=_quiet)
    assert not (tmp_path / "new").exists()


def test_a_log_line_cut_off_by_a_crash_is_dropped_on_resume(train_data, tmp_path):
    """A step is logged before its checkpoint: a line cut off mid-write is of
    a step the resumed run logs again. The log stays one JSON record a line."""
    out = tmp_path / "run"
    train(_cfg(train_data, out, steps=2), log=_quiet)
    whole = _log(out)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a crash in the middle of step 3's write
    train(_cfg(train_data, out, steps=3), resume=True, log=_quiet)
    lines = _log(out)
    assert lines[:-1] == whole
    assert [json.loads(x)["step"] for x in lines][-2:] == [2, 3]


def test_a_whole_last_record_without_its_newline_is_kept(train_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(train_data, out, steps=2), log=_quiet)
    whole = _log(out)
    (out / "log.jsonl").write_text("\n".join(whole))  # the crash came before the last newline
    train(_cfg(train_data, out, steps=3), resume=True, log=_quiet)
    lines = _log(out)
    assert lines[:-1] == whole and json.loads(lines[-1])["step"] == 3


def test_an_epoch_without_a_batch_by_chance_does_not_end_the_run(train_data, tmp_path, monkeypatch):
    """Training samples frames at random: a file damaged in a few frames fails
    in some epochs only, and an epoch may then give no batch. The run goes
    on; if the epochs stay empty it stops with an error, its steps saved."""
    from vpengine.train import loop

    real = loop._Run.epoch_steps
    empty_from = {"epoch": 1, "until": 3}

    def flaky(run):
        if empty_from["epoch"] <= run.epoch < empty_from["until"]:
            return 0, {}  # as an epoch whose sampled frames all hit damage
        return real(run)

    monkeypatch.setattr(loop._Run, "epoch_steps", flaky)
    out = train(_cfg(train_data, tmp_path / "a", steps=5), log=_quiet)
    assert out["steps"] == 5
    empty_from["until"] = 10**9  # never again a batch after epoch 0 (3 steps of 2 clips)
    with pytest.raises(ValueError, match=r"10 epochs in a row gave no batch.*step 3 is saved"):
        train(_cfg(train_data, tmp_path / "b", steps=5), log=_quiet)
    monkeypatch.setattr(loop._Run, "epoch_steps", real)
    assert train(_cfg(train_data, tmp_path / "b", steps=5), resume=True, log=_quiet)["steps"] == 5


def test_stage1_refuses_a_caption_of_only_spaces_or_punctuation():
    """Canonicalized, such a caption is ".", the same text as an empty one."""
    from types import SimpleNamespace

    from vpengine.data.manifest import ManifestEntry
    from vpengine.train.prepare import check_manifest

    cfg = SimpleNamespace(stage=1, manifest="m.jsonl")
    check_manifest(cfg, [ManifestEntry(f"{i}.mp4", c) for i, c in enumerate(["a dog runs", "42", "\u3000猫", "...é"])])
    for caption in (None, "", "   ", "\n\t", "...", " - ", "\u3000.\u00a0"):
        with pytest.raises(ValueError, match="needs a caption on every row"):
            check_manifest(cfg, [ManifestEntry("a.mp4", "a dog runs"), ManifestEntry("b.mp4", caption)])
    check_manifest(SimpleNamespace(stage=2, manifest="m.jsonl"), [ManifestEntry("b.mp4", " ")])
