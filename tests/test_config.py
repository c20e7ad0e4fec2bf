"""Config loading: includes, dotted overrides, strict keys with suggestions, registry names."""

from pathlib import Path

import pytest

from polydistill.config import dump_config, load_config
from polydistill.errors import ConfigError
from polydistill.pipeline.train import check_names

BASE = """
data:
  train: /data/train
  val: /data/val
tasks:
  depth: {}
  semseg: {}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_dotted_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", BASE), ["train.epochs=3", "student.backbone=resnet18"])
    assert cfg.train.epochs == 3
    assert cfg.student.backbone == "resnet18"
    assert cfg.data.batch_size == 16  # default filled in
    assert set(cfg.tasks) == {"depth", "semseg"}


def test_base_include_is_merged_and_overridden(tmp_path):
    write(tmp_path, "base.yaml", BASE + "train:\n  lr: 0.01\n  epochs: 7\n")
    cfg = load_config(write(tmp_path, "child.yaml", "_base_: base.yaml\ntrain:\n  lr: 0.5\n"))
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 7


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'epochs'"):
        load_config(write(tmp_path, "a.yaml", BASE), ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'dta'.*did you mean 'data'"):
        load_config(write(tmp_path, "b.yaml", BASE + "dta: 1\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.lr"):
        load_config(write(tmp_path, "a.yaml", BASE), ["train.lr=fast"])


def test_unknown_component_names_suggest(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", BASE), ["distill.teacher_weighting=statik"])
    with pytest.raises(ConfigError, match=r"unknown teacher weighting 'statik'.*did you mean 'static'"):
        check_names(cfg)
    cfg = load_config(write(tmp_path, "b.yaml", BASE.replace("depth: {}", "dpeth: {}")))
    with pytest.raises(ConfigError, match=r"unknown task 'dpeth'.*did you mean 'depth'"):
        check_names(cfg)


def test_yaml_tags_are_not_executed(tmp_path):
    evil = BASE + "student:\n  backbone: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a.yaml", evil))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, "a.yaml", BASE), ["train.epochs"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", BASE), ["train.epochs=2"])
    again = load_config(write(tmp_path, "dumped.yaml", dump_config(cfg)))
    assert again == cfg
