"""Checkpoints: a run killed after a checkpoint resumes to the same metrics; workdir
guard; checkpoints of another model; atomic writes."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest
import tensorflow_datasets as tfds

from sparsejax.experiment import checkpoint as ckpt_lib
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import train


def _config() -> ml_collections.ConfigDict:
    config = config_lib.smoke(config_lib.base_config())
    config.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (16,)}})
    config.method = ml_collections.ConfigDict({"name": "magnitude", "sparsity": 0.5})
    config.num_steps = 6
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    return config


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


class _Killed(Exception):
    pass


def test_run_killed_after_a_checkpoint_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    config = _config()
    with tfds.testing.mock_data(num_examples=64):
        reference = train.train_and_evaluate(config, str(tmp_path / "a"))
        # Kill the second run right after the checkpoint of step 4 of phase 2 (retrain),
        # after it has logged step 5: the resumed run must drop and replay that record.
        save = ckpt_lib.Checkpointer.save

        def save_then_die(self, step, state):
            save(self, step, state)
            if "retrain" in self.directory and step == 4:
                self.close()
                raise _Killed()

        monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_then_die)
        with pytest.raises(_Killed):
            train.train_and_evaluate(config, str(tmp_path / "b"))
        assert not (tmp_path / "b" / "summary.json").exists()
        with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # Logged after the save.
            f.write(json.dumps({"type": "train", "step": 11, "phase": "retrain1"}) + "\n")
        monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
        resumed = train.train_and_evaluate(config, str(tmp_path / "b"))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rs]
    assert strip(_records(tmp_path / "b")) == strip(_records(tmp_path / "a"))
    for key in ("accuracy", "loss", "weight_sparsity", "train_flop_reduction"):
        assert resumed[key] == reference[key]


def test_finished_run_is_not_trained_again(tmp_path):
    config = _config()
    config.method = ml_collections.ConfigDict({"name": "dense"})
    config.num_steps = 2
    with tfds.testing.mock_data(num_examples=64):
        first = train.train_and_evaluate(config, str(tmp_path))
        mtime = os.path.getmtime(tmp_path / "summary.json")
        again = train.train_and_evaluate(config, str(tmp_path))
    assert again == first and os.path.getmtime(tmp_path / "summary.json") == mtime


def test_workdir_with_another_config_is_refused_unless_overwrite(tmp_path):
    config = config_lib.base_config()
    ckpt_lib.prepare_workdir(str(tmp_path), config_lib.to_dict(config))
    (tmp_path / "summary.json").write_text("{}")
    config.method.name = "swat"
    with pytest.raises(ValueError, match=r"different config \(differing keys: method.name\)"
                                         r".*--overwrite.*--resume"):
        ckpt_lib.prepare_workdir(str(tmp_path), config_lib.to_dict(config))
    assert (tmp_path / "summary.json").exists()  # Nothing lost.
    assert ckpt_lib.prepare_workdir(str(tmp_path), config_lib.to_dict(config),
                                    resume=True) == "changed"
    assert ckpt_lib.prepare_workdir(str(tmp_path), config_lib.to_dict(config),
                                    overwrite=True) == "new"
    assert not (tmp_path / "summary.json").exists()


def test_checkpoint_of_another_model_names_the_parameter(tmp_path):
    config = _config()
    config.method = ml_collections.ConfigDict({"name": "dense"})
    config.num_steps = 2
    with tfds.testing.mock_data(num_examples=64):
        train.train_and_evaluate(config, str(tmp_path))
        os.remove(tmp_path / "summary.json")
        config.model.kwargs.features = (8,)
        with pytest.raises(ValueError, match=r"another model: parameter 'fc1/bias' has shape "
                                             r"\(16,\) in the checkpoint but \(8,\)"):
            train.train_and_evaluate(config, str(tmp_path), resume=True)


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "x.json")
    ckpt_lib.write_json(path, {"a": 1})

    def broken_dump(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", broken_dump)
    with pytest.raises(RuntimeError):
        ckpt_lib.write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]  # No temporary file left behind.
