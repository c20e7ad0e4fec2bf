"""Recorders: forward-hook capture of intermediate features by module path."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from polydistill.errors import ConfigError
from polydistill.recorders import FeatureRecorders, ModuleOutputRecorder, module_paths


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()


class TupleNet(nn.Module):
    """A block returning a tuple, followed by a layer that only uses the second element."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pair = Pair()
        self.head = nn.Conv2d(8, 2, 1)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a, b = self.pair(self.stem(x))
        return self.head(b) + a.mean()


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return self.left(x), self.right(x)


def test_records_resnet_stages_with_shapes(resnet):
    with FeatureRecorders(resnet, {"c4": "layer3", "c5": "layer4"}) as rec, torch.no_grad():
        resnet(torch.rand(2, 3, 64, 64))
        records = rec.records
    assert set(records) == {"c4", "c5"}
    assert records["c4"].shape == (2, 256, 4, 4)
    assert records["c5"].shape == (2, 512, 2, 2)
    assert not rec.attached
    # hooks were removed on exit: the model has no leftover hooks
    assert not resnet._forward_pre_hooks and not resnet.layer4._forward_hooks


def test_gradients_flow_through_recorded_feature():
    student = timm.create_model("resnet18", pretrained=False).train()
    rec = FeatureRecorders({"feat": "layer3"}).attach(student)
    student(torch.rand(2, 3, 64, 64))
    feat = rec["feat"]
    assert feat.requires_grad
    feat.pow(2).mean().backward()
    assert student.conv1.weight.grad is not None  # the stem, well before layer3
    assert student.conv1.weight.grad.abs().sum() > 0
    assert student.layer4[0].conv1.weight.grad is None  # after the recorded layer: untouched
    rec.detach_all()
    assert not rec["feat"].requires_grad
    rec.detach()


def test_tuple_output_with_index():
    net = TupleNet()
    rec = FeatureRecorders(net, {"right": {"path": "pair", "index": 1}, "left": {"path": "pair", "index": -2},
                                 "both": "pair"})
    with rec:
        net(torch.rand(2, 3, 8, 8))
    assert rec["right"].shape == (2, 8, 8, 8)
    assert rec["left"].shape == (2, 4, 8, 8)
    assert isinstance(rec["both"], tuple) and len(rec["both"]) == 2


def test_bad_index_is_reported():
    net = TupleNet()
    with FeatureRecorders(net, {"x": {"path": "pair", "index": 5}}), pytest.raises(ConfigError, match="out of range"):
        net(torch.rand(1, 3, 8, 8))
    with FeatureRecorders(net, {"x": {"path": "stem", "index": 0}}), pytest.raises(ConfigError, match="drop 'index'"):
        net(torch.rand(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="unknown key 'idx'.*did you mean 'index'"):
        FeatureRecorders({"x": {"path": "pair", "idx": 0}})


def test_unknown_path_suggests_and_lists_nearby(resnet):
    with pytest.raises(ConfigError) as info:
        FeatureRecorders(resnet, {"c5": "layer44"}).attach()
    msg = str(info.value)
    assert "'layer44'" in msg and "did you mean 'layer4'" in msg
    assert "layer1" in msg and "polydistill modules" in msg
    assert "\n" not in msg
    # nearby paths come from the deepest existing ancestor
    with pytest.raises(ConfigError, match=r"under 'layer4\.1': .*layer4\.1\.conv2"):
        ModuleOutputRecorder("layer4.1.conv9").attach(resnet)
    # a failed attach hooks nothing
    assert not resnet._forward_pre_hooks and not resnet.layer3._forward_hooks
    with pytest.raises(ConfigError):
        FeatureRecorders(resnet, {"ok": "layer3", "bad": "nope"}).attach()
    assert not resnet._forward_pre_hooks and not resnet.layer3._forward_hooks


def test_detach_removes_hooks():
    net = TupleNet()
    rec = FeatureRecorders({"stem": "stem"}).attach(net)
    net(torch.zeros(1, 3, 8, 8))
    first = rec["stem"]
    rec.detach()
    net(torch.ones(1, 3, 8, 8))
    assert rec["stem"] is first  # not updated any more
    assert not net._forward_pre_hooks and not net.stem._forward_hooks


def test_module_not_run_raises():
    net = TupleNet()
    rec = FeatureRecorders({"unused": "unused", "stem": "stem"}).attach(net)
    with pytest.raises(ConfigError, match="module 'unused'.*did not run in the last forward pass"):
        rec.records  # noqa: B018 - before any forward pass
    net(torch.rand(1, 3, 8, 8))
    assert rec["stem"].shape == (1, 4, 8, 8)
    with pytest.raises(ConfigError, match="module 'unused'.*did not run in the last forward pass"):
        rec["unused"]
    with pytest.raises(ConfigError, match="did you mean 'stem'"):
        rec["stme"]
    rec.clear()
    with pytest.raises(ConfigError, match="did not run"):
        rec["stem"]
    rec.detach()


def test_single_recorder_keeps_only_last_forward():
    net = TupleNet()
    rec = ModuleOutputRecorder("stem").attach(net)
    net(torch.zeros(1, 3, 8, 8))
    first = rec.output
    net(torch.ones(1, 3, 8, 8))
    assert rec.ran and rec.output is not first
    assert not torch.equal(rec.output, first)
    with pytest.raises(ConfigError, match="already attached"):
        rec.attach(net)
    rec.detach()
    assert not net._forward_pre_hooks and not net.stem._forward_hooks


def test_module_paths(resnet):
    paths = module_paths(resnet)
    assert "layer4.1.conv2" in paths and "" not in paths
    top = module_paths(resnet, max_depth=1)
    assert "layer4" in top and "layer4.1" not in top
    assert "layer4.1" in module_paths(resnet, max_depth=2)
    with pytest.raises(ValueError):
        module_paths(resnet, max_depth=0)


def test_student_backbone_and_neck():
    from polydistill.config import StudentConfig
    from polydistill.students.student import Student
    from polydistill.tasks import build_task

    student = Student({"depth": build_task("depth")}, StudentConfig(backbone="resnet18"))
    specs = {"c3": "backbone.layer3", "fused": "neck", "last": {"path": "backbone", "index": -1}}
    with FeatureRecorders(student, specs) as rec:
        student(torch.rand(2, 3, 64, 64))
        assert rec["c3"].shape == (2, 256, 4, 4)
        assert rec["last"].shape == (2, 512, 2, 2)
        assert rec["fused"].shape[:2] == (2, 64)
        rec["fused"].mean().backward()
    assert student.backbone.conv1.weight.grad is not None
