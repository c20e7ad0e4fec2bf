"""`polydistill generate` never deletes what it did not write (issue 18, review row 104).

Rule: a run records its parameters in `.generating` before the first file and in `.complete` when done; the
files a run writes follow from those parameters. A re-run removes only those files; a folder holding anything
else (a user dataset, a photo dropped into `images/`, an edited `classes.yaml`) is refused with a DataError
before a file is touched. New or empty folders and re-runs over its own output give byte-identical splits.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.data import shapescenes as ss
from polydistill.data.shapescenes.write import RUNNING_MARKER
from polydistill.errors import DataError
from tests.conftest import write_tiny_dataset

ARGS = {"seed": 1, "height": 16, "width": 24, "workers": 1}


def read_tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """What a new folder gets: the reference every other case must equal byte for byte."""
    return read_tree(ss.generate_split(tmp_path_factory.mktemp("fresh") / "out", 3, **ARGS))


def test_cli_refuses_a_user_dataset_and_keeps_every_file(tmp_path):
    write_tiny_dataset(tmp_path / "user", 4, seed=0, labels=("depth", "semseg", "boxes"))
    (tmp_path / "user" / "notes.txt").write_text("mine")
    before = read_tree(tmp_path / "user")
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "user"), "--count", "2"])
    assert result.exit_code == 2, result.output
    assert "not the output of an earlier generate" in result.output
    assert "choose an empty or new folder" in result.output
    assert read_tree(tmp_path / "user") == before


def test_user_photo_inside_an_earlier_output_is_refused_and_kept(tmp_path):
    out = ss.generate_split(tmp_path / "out", 3, **ARGS)
    (out / "images" / "my_photo.png").write_bytes(b"precious")
    before = read_tree(out)
    with pytest.raises(DataError, match="images/my_photo.png.*choose an empty or new folder"):
        ss.generate_split(out, 2, **ARGS)
    assert read_tree(out) == before


def test_a_folder_with_only_unrelated_files_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not empty.*notes\.txt"):
        ss.generate_split(tmp_path / "out", 3, **ARGS)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_an_edited_classes_yaml_in_its_own_output_is_refused(tmp_path):
    out = ss.generate_split(tmp_path / "out", 3, **ARGS)
    (out / "classes.yaml").write_text("names: [a, b]\n")
    with pytest.raises(DataError, match="classes.yaml"):
        ss.generate_split(out, 2, **ARGS)
    assert (out / "classes.yaml").read_text() == "names: [a, b]\n"


def test_an_unreadable_marker_is_refused(tmp_path):
    out = ss.generate_split(tmp_path / "out", 3, **ARGS)
    (out / ss.COMPLETE_MARKER).write_text("{not json")
    with pytest.raises(DataError, match="marker is unreadable"):
        ss.generate_split(out, 2, **ARGS)
    assert (out / "images" / "000000.png").exists()


def test_a_file_as_the_output_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(DataError, match="is a file, not a folder"):
        ss.generate_split(tmp_path / "out", 3, **ARGS)


def test_an_empty_folder_or_empty_subfolders_give_the_same_bytes(tmp_path, fresh):
    (tmp_path / "empty").mkdir()
    assert read_tree(ss.generate_split(tmp_path / "empty", 3, **ARGS)) == fresh
    (tmp_path / "dirs" / "depth").mkdir(parents=True)
    (tmp_path / "dirs" / "normals" / "sub").mkdir(parents=True)
    out = ss.generate_split(tmp_path / "dirs", 3, **ARGS)
    assert read_tree(out) == fresh and not (out / "normals").exists()


def test_regenerating_its_own_output_with_other_parameters_gives_the_same_bytes(tmp_path, fresh):
    out = ss.generate_split(tmp_path / "out", 5, seed=2, height=16, width=24, workers=1,
                            labels=("depth", "normals"), id_prefix="v")
    (out / "notes.txt").write_text("beside the split, never touched")
    ss.generate_split(out, 3, **ARGS)
    tree = read_tree(out)
    assert tree.pop("notes.txt") == b"beside the split, never touched"
    assert tree == fresh and not (out / "normals").exists()


def test_an_interrupted_run_is_cleaned_up_and_regenerated(tmp_path, fresh):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000007.png").write_bytes(b"half-written")
    params = {"num_images": 8, "labels": [["semseg"]], "id_prefix": "", "seed": 9}
    (out / RUNNING_MARKER).write_text(json.dumps(params))
    assert read_tree(ss.generate_split(out, 3, **ARGS)) == fresh
    assert not (out / RUNNING_MARKER).exists()
