"""timm feature teachers: offline (random weights saved to tmp), frozen, features at the teacher's own grid."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from polydistill.config import TeacherConfig
from polydistill.errors import ConfigError
from polydistill.teachers import build_teacher
from polydistill.teachers.timm_models import TimmTeacher
from tests.distill_check import assert_distills

RANDOM = {"pretrained": False}
# DINOv2 with 4 registers, shrunk to one narrow block: patch 14, 1 class + 4 register prefix tokens
DINO = "vit_small_patch14_reg4_dinov2"
TINY_DINO = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _teacher(path: str, tasks=("feat",), **options) -> TimmTeacher:
    cfg = TeacherConfig(name="t", path=f"timm:{path}", tasks=None if tasks is None else list(tasks), options=options)
    return build_teacher(cfg)


def _save(model: torch.nn.Module, path) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


def test_vit_features_keep_the_token_grid_of_a_non_square_input():
    teacher = _teacher("test_vit", **RANDOM)
    assert isinstance(teacher, TimmTeacher)
    teacher.train()  # must not leave eval mode
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert teacher.feature_channels == {"feat": 64} and teacher.output_kind("feat") == "features"
    images = torch.rand(2, 3, 48, 64)
    out = teacher.predict(images)
    assert set(out) == {"feat"} and out["feat"].shape == (2, 64, 3, 4)  # patch 16: 48x64 -> 3x4 tokens
    assert bool(torch.isfinite(out["feat"]).all()) and not out["feat"].requires_grad
    # the model's own normalisation (test_vit: mean = std = 0.5) and its last block, final norm applied
    with torch.no_grad():
        expected = teacher.model.forward_intermediates((images - 0.5) / 0.5, indices=[-1], norm=True,
                                                       intermediates_only=True)[0]
    torch.testing.assert_close(out["feat"], expected)
    assert_distills(teacher)


def test_prefix_tokens_are_dropped_and_the_rest_is_the_patch_grid():
    teacher = _teacher(DINO, **RANDOM, timm_kwargs=TINY_DINO)
    assert teacher.num_prefix_tokens == 5 and teacher.stride == (14, 14)
    images = torch.rand(1, 3, 56, 84)  # multiples of 14: runs as is
    out = teacher.predict(images)["feat"]
    with torch.no_grad():
        x = (images - teacher.mean) / teacher.std
        tokens = teacher.model.forward_features(x)  # final-normed tokens, prefix first
    assert tokens.shape[1] - 5 == out.shape[-2] * out.shape[-1] == 4 * 6
    torch.testing.assert_close(out, tokens[:, 5:].transpose(1, 2).reshape(1, 32, 4, 6))
    # not a multiple of the patch: rounded to the nearest one (50x90 -> 56x84)
    assert teacher.predict(torch.rand(1, 3, 50, 90))["feat"].shape == (1, 32, 4, 6)


def test_grid_stride_rescales_to_the_requested_grid():
    vit = _teacher("test_vit", **RANDOM, grid_stride=8)  # patch 16 but 8 pixels per token: upscaled x2
    assert vit.predict(torch.rand(1, 3, 48, 64))["feat"].shape == (1, 64, 6, 8)
    dino = _teacher(DINO, **RANDOM, timm_kwargs=TINY_DINO, grid_stride=16)  # DUNE: patch 14 on a patch-16 grid
    assert dino.run_size((64, 96)) == (56, 84)
    assert dino.predict(torch.rand(1, 3, 64, 96))["feat"].shape == (1, 32, 4, 6)
    cnn = _teacher("test_resnet", **RANDOM, layer=-1, grid_stride=16, input_size=[96, 128])
    assert cnn.stride == (32, 32) and cnn.predict(torch.rand(1, 3, 40, 40))["feat"].shape == (1, 96, 6, 8)


def test_cnn_layers_and_modules():
    resnet = _teacher("test_resnet", **RANDOM)
    assert resnet.feature_channels == {"feat": 96}
    assert resnet.predict(torch.rand(2, 3, 64, 96))["feat"].shape == (2, 96, 2, 3)
    stage3 = _teacher("test_resnet", **RANDOM, layer=-2)
    assert stage3.feature_channels == {"feat": 192} and stage3.stride == (16, 16)
    module = _teacher("test_resnet", **RANDOM, module="layer3")
    assert module.predict(torch.rand(2, 3, 64, 96))["feat"].shape == (2, 192, 4, 6)
    assert_distills(resnet, size=(64, 96))
    with pytest.raises(ConfigError, match="out of range.*5 feature levels"):
        _teacher("test_resnet", **RANDOM, layer=7)


def test_module_reads_vit_tokens_and_unknown_paths_list_nearby_ones():
    teacher = _teacher(DINO, **RANDOM, timm_kwargs=TINY_DINO, module="blocks.0")
    images = torch.rand(2, 3, 56, 70)
    out = teacher.predict(images)["feat"]
    with torch.no_grad():  # the block's raw output (no final norm), prefix tokens dropped
        expected = teacher.model.forward_intermediates((images - teacher.mean) / teacher.std, indices=[0],
                                                       intermediates_only=True)[0]
    torch.testing.assert_close(out, expected)
    assert out.shape == (2, 32, 4, 5)
    # a dynamic ViT's patch_embed returns (B, h, w, C): told apart from (B, C, h, w) and transposed
    embed = _teacher("test_vit", **RANDOM, module="patch_embed")
    assert embed.feature_channels == {"feat": 64} and embed.predict(images)["feat"].shape == (2, 64, 4, 4)
    with pytest.raises(ConfigError, match=r"unknown module path 'blocks\.3'.*blocks\.0"):
        _teacher(DINO, **RANDOM, timm_kwargs=TINY_DINO, module="blocks.3")
    with pytest.raises(ConfigError, match="did you mean 'layer4'"):
        _teacher("test_resnet", **RANDOM, module="layer44")


def test_weights_from_a_local_file_through_the_overlay_or_checkpoint(tmp_path):
    torch.manual_seed(0)
    saved = _save(timm.create_model("test_vit"), tmp_path / "vit.safetensors")
    _save(timm.create_model("test_vit"), tmp_path / "other.pth")
    key = "blocks.0.attn.qkv.weight"
    overlay = _teacher("test_vit", pretrained_cfg_overlay={"file": str(tmp_path / "vit.safetensors")})
    torch.testing.assert_close(overlay.model.state_dict()[key], saved[key], rtol=0, atol=0)
    checkpoint = _teacher("test_vit", checkpoint=str(tmp_path / "vit.safetensors"))  # pretrained: false implied
    torch.testing.assert_close(checkpoint.model.state_dict()[key], saved[key], rtol=0, atol=0)
    images = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(overlay.predict(images)["feat"], checkpoint.predict(images)["feat"])
    assert overlay.fingerprint() == checkpoint.fingerprint()
    assert _teacher("test_vit", checkpoint=str(tmp_path / "other.pth")).fingerprint() != overlay.fingerprint()


def test_a_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    _save(timm.create_model("test_vit", num_classes=0), tmp_path / "backbone.safetensors")
    with pytest.raises(ConfigError, match=r"missing keys: head\.weight, head\.bias.*num_classes: 0"):
        _teacher("test_vit", checkpoint=str(tmp_path / "backbone.safetensors"))
    teacher = _teacher("test_vit", checkpoint=str(tmp_path / "backbone.safetensors"), timm_kwargs={"num_classes": 0})
    assert teacher.feature_channels == {"feat": 64}
    with pytest.raises(ConfigError, match="not found"):
        _teacher("test_vit", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="replaces the pretrained weights"):
        _teacher("test_vit", pretrained=True, checkpoint=str(tmp_path / "backbone.safetensors"))


def test_pretrained_weights_come_from_the_cache_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="not cached locally.*pretrained_cfg_overlay"):
        _teacher("test_vit")  # pretrained by default
    assert time.monotonic() - start < 5
    snapshot = tmp_path / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("abc123")
    saved = _save(timm.create_model("test_vit"), snapshot / "model.safetensors")
    teacher = _teacher("test_vit.r160_in1k")
    torch.testing.assert_close(teacher.model.state_dict()["pos_embed"], saved["pos_embed"], rtol=0, atol=0)


def test_fingerprint_follows_the_recipe(tmp_path):
    _save(timm.create_model("test_vit"), tmp_path / "vit.safetensors")
    weights = {"checkpoint": str(tmp_path / "vit.safetensors")}
    base = _teacher("test_vit", **weights).fingerprint()
    assert _teacher("test_vit", **weights).fingerprint() == base
    changed = [_teacher("test_vit", **weights, layer=2), _teacher("test_vit", **weights, module="blocks.5"),
               _teacher("test_vit", **weights, grid_stride=8), _teacher("test_vit", **weights, input_size=[64, 64]),
               _teacher("test_vit", **weights, norm=False),
               _teacher("test_vit", **weights, pretrained_cfg_overlay={"mean": [0.4, 0.4, 0.4]})]
    assert len({t.fingerprint() for t in changed} | {base}) == len(changed) + 1
    recipe = changed[-1].recipe()
    assert recipe["model"] == "test_vit" and recipe["mean"] == [0.4, 0.4, 0.4] and recipe["layer"] == -1


def test_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="did you mean 'test_vit'"):
        _teacher("test_vitt", **RANDOM)
    with pytest.raises(ConfigError, match="did you mean 'test_vit.r160_in1k'"):
        _teacher("test_vit.r160_in1", **RANDOM)
    with pytest.raises(ConfigError, match="prefix are not supported"):
        _teacher("hf-hub:timm/test_vit.r160_in1k", **RANDOM)
    with pytest.raises(ConfigError, match="a feature teacher needs tasks"):
        _teacher("test_vit", tasks=None, **RANDOM)
    with pytest.raises(ConfigError, match="did you mean 'grid_stride'"):
        _teacher("test_vit", **RANDOM, grid_strid=16)
    with pytest.raises(ConfigError, match="not both"):
        _teacher("test_vit", **RANDOM, layer=1, module="blocks.1")
    with pytest.raises(ConfigError, match="depth_convention"):
        build_teacher(TeacherConfig(name="t", path="timm:test_vit", tasks=["feat"], depth_convention="metric",
                                    options=RANDOM))
    with pytest.raises(ConfigError, match="timm_kwargs"):
        _teacher("test_vit", **RANDOM, timm_kwargs={"no_such_argument": 1})


def test_models_without_forward_intermediates_read_their_feature_info_module(monkeypatch):
    from timm.models.resnet import ResNet

    monkeypatch.delattr(ResNet, "forward_intermediates")
    teacher = _teacher("test_resnet", **RANDOM, layer=-2)
    assert teacher.module_path == "layer3" and teacher.feature_channels == {"feat": 192}
    assert teacher.predict(torch.rand(1, 3, 64, 64))["feat"].shape == (1, 192, 4, 4)
