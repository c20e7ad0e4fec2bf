"""More bad inputs of issue 18 that belong to no other file: each one clear error, nothing lost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polydistill
from polydistill.cache import CacheError
from tests.conftest import tiny_config


class Flat(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full_like(images[:, :1], 3.0)


def test_a_teacher_cache_path_that_is_a_file_says_so(tiny_data, tmp_path):
    blocker = tmp_path / "cachefile"
    blocker.write_text("my notes")
    teacher = polydistill.Teacher.from_module(Flat(), name="flat", tasks=["depth"])
    with pytest.raises(CacheError, match=r"cachefile is a file, not a folder: set distill.teacher_cache"):
        polydistill.cache_teachers(tiny_config(tiny_data["train"], None), blocker, teachers=[teacher])
    assert blocker.read_text() == "my notes"  # nothing lost
