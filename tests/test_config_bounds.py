"""Config loading bounds its work and turns every malformed file or override into one ConfigError."""

from __future__ import annotations

import time

import pytest
import yaml

from polydistill.config import MAX_CONFIG_BYTES, load_config
from polydistill.errors import ConfigError
from tests.conftest import tiny_config

BOMB = """a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_a_yaml_alias_bomb_fails_fast(tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - t0 < 5  # was > 120 s


def test_a_binary_file_is_not_a_config(tmp_path):
    (tmp_path / "junk.yaml").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(tmp_path / "junk.yaml")


def test_a_huge_file_is_refused_before_parsing(tmp_path):
    (tmp_path / "big.yaml").write_text("# " + "x" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="is the right file"):
        load_config(tmp_path / "big.yaml")


@pytest.mark.parametrize("base", [5, [1, 2], {"a": 1}])
def test_base_must_name_files(tmp_path, base):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"_base_": base}))
    with pytest.raises(ConfigError, match="_base_ must be a file path"):
        load_config(tmp_path / "c.yaml")


def test_a_missing_base_names_the_including_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"_base_": "missing.yaml"}))
    with pytest.raises(ConfigError, match=r"missing\.yaml \(included by .*c\.yaml\)"):
        load_config(tmp_path / "c.yaml")


def test_overrides_reach_list_items(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data["train"], None)
    cfg["teachers"] = [{"name": "t", "path": "runs/a"}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(tmp_path / "c.yaml", ["teachers.0.path=runs/b", "train.lr=0.5"])
    assert loaded.teachers[0].path == "runs/b" and loaded.train.lr == 0.5
    with pytest.raises(ConfigError):
        load_config(tmp_path / "c.yaml", ["teachers.3.path=runs/b"])


def test_an_impossible_image_size_is_refused_before_any_allocation(tiny_data):
    with pytest.raises(ConfigError, match="data.height.*less than or equal to 8192"):
        load_config(base=tiny_config(tiny_data["train"], None), overrides=["data.height=30000"])


def test_pretrained_backbone_offline_is_one_clear_error():
    """Not cached and no network: a ConfigError saying what to do (the test runs offline in a subprocess)."""
    import os
    import subprocess
    import sys

    code = ("from polydistill.students.student import create_backbone\n"
            "from polydistill.errors import ConfigError\n"
            "try:\n    create_backbone('mobilenetv3_small_050', pretrained=True)\n"
            "except ConfigError as e:\n    print('CONFIG', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-polydistill-test"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("CONFIG cannot load timm's pretrained weights for 'mobilenetv3_small_050'")
    assert "student.pretrained: false" in out
