"""Depth and semseg tasks: every loss and metric against numbers worked out by hand."""

import math

import numpy as np
import pytest
import torch

from polydistill.errors import ConfigError, DataError
from polydistill.tasks import TASKS, build_task
from polydistill.tasks.depth import DepthTask
from polydistill.tasks.semseg import SemsegTask, palette

E = math.e
LN2, LN3 = math.log(2), math.log(3)


def t(rows, **kw):
    return torch.tensor(rows, dtype=torch.float32, **kw)


# ---------------------------------------------------------------------------------------------- depth
# target [[1, e], [e², 0]]  ->  log target [[0, 1], [2, -]]  (the 0 is "no measurement")
# raw    [[0.5, 1], [3, 7]] ->  d = raw - log target = [0.5, 0, 1] on the three valid pixels
DEPTH_TARGET = [[[[1.0, E], [E * E, 0.0]]]]
DEPTH_RAW = [[[[0.5, 1.0], [3.0, 7.0]]]]


def test_l1_log_hand_value():
    loss = DepthTask(loss="l1_log").supervised_loss(t(DEPTH_RAW), t(DEPTH_TARGET))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)  # (0.5 + 0 + 1) / 3


def test_l1_log_max_depth_drops_far_pixels():
    # max_depth=5 also drops e² ≈ 7.39 -> d = [0.5, 0]
    loss = DepthTask(max_depth=5.0).supervised_loss(t(DEPTH_RAW), t(DEPTH_TARGET))
    assert loss.item() == pytest.approx(0.25, abs=1e-6)


def test_silog_hand_value():
    # mean d² = 1.25/3, mean d = 0.5: sqrt(0.416667 - 0.85 * 0.25) = sqrt(0.204167) = 0.451848
    loss = DepthTask(loss="silog", silog_lambda=0.85).supervised_loss(t(DEPTH_RAW), t(DEPTH_TARGET))
    assert loss.item() == pytest.approx(0.451848, abs=1e-5)


def test_silog_lambda_one_is_scale_invariant():
    # d = [c, c, c]: variance 0 -> loss is sqrt(eps), i.e. ~0, whatever the offset c
    target = t([[[[1.0, 2.0], [3.0, 0.0]]]])
    raw = torch.log(target.clamp_min(1e-3)) + 0.7
    loss = DepthTask(loss="silog", silog_lambda=1.0).supervised_loss(raw, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("kind", ["l1_log", "silog"])
def test_sample_without_valid_pixels_is_zero_with_finite_gradients(kind):
    raw = torch.cat([t(DEPTH_RAW), t([[[[1.0, -2.0], [0.0, 3.0]]]])]).requires_grad_(True)
    target = torch.cat([t(DEPTH_TARGET), torch.zeros(1, 1, 2, 2)])
    target[1, 0, 0, 0] = float("nan")  # non-finite counts as "no measurement" too
    loss = DepthTask(loss=kind).supervised_loss(raw, target)
    assert loss[1].item() == 0.0
    loss.sum().backward()
    assert torch.isfinite(raw.grad).all()
    assert raw.grad[1].abs().sum().item() == 0.0
    assert raw.grad[0, 0, 1, 1].item() == 0.0  # the invalid pixel of sample 0 gets no gradient


def test_depth_target_size_mismatch_raises():
    with pytest.raises(ValueError, match="does not match"):
        DepthTask().supervised_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 3, 3))


def test_depth_distill_hand_values():
    task = DepthTask()
    # teacher [[1, 0], [e, nan]] metres, raw 0 -> d = [0, -1] on the two valid pixels -> 0.5
    teacher = t([[[[1.0, 0.0], [E, float("nan")]]]])
    assert task.distill_loss(torch.zeros(1, 1, 2, 2), teacher).item() == pytest.approx(0.5, abs=1e-6)
    # a 1x1 teacher map of e is resized to 2x2 (constant e) -> |0 - 1| everywhere -> 1
    small = torch.full((1, 1, 1, 1), E)
    assert task.distill_loss(torch.zeros(1, 1, 2, 2), small).item() == pytest.approx(1.0, abs=1e-6)


def test_depth_predict_is_exp():
    assert torch.allclose(DepthTask().predict(t([0.0, 1.0])), t([1.0, E]))


def test_depth_metric_pools_pixels_over_the_split():
    # batch 1: one valid pixel (gt 2, pred 1) and one without depth
    # batch 2: three valid pixels gt [1, 2, 4], pred [1, 2, 4.4]
    # pooled N=4: abs_rel (0.5 + 0 + 0 + 0.1)/4 = 0.15; rmse sqrt((1 + 0.16)/4) = sqrt(0.29) = 0.538516;
    #            delta1: ratios 2, 1, 1, 1.1 -> 3/4
    m = DepthTask().new_metric()
    m.update(t([[[[1.0, 5.0]]]]), t([[[[2.0, 0.0]]]]))
    m.update(t([[[[1.0, 2.0, 4.4]]]]), t([[[[1.0, 2.0, 4.0]]]]))
    r = m.compute()
    assert r["abs_rel"] == pytest.approx(0.15, abs=1e-6)
    assert r["rmse"] == pytest.approx(0.538516, abs=1e-6)
    assert r["delta1"] == pytest.approx(0.75, abs=1e-12)
    # the mean of per-batch values would be abs_rel (0.5 + 0.0333)/2 = 0.2667, rmse (1 + 0.2309)/2 = 0.6155
    assert abs(r["abs_rel"] - 0.26667) > 0.1
    assert abs(r["rmse"] - 0.61547) > 0.05


def test_depth_metric_state_sums_across_processes():
    a, b, both = (DepthTask().new_metric() for _ in range(3))
    a.update(t([[[[1.0, 5.0]]]]), t([[[[2.0, 0.0]]]]))
    b.update(t([[[[1.0, 2.0, 4.4]]]]), t([[[[1.0, 2.0, 4.0]]]]))
    both.load_state({k: a.state()[k] + b.state()[k] for k in a.state()})
    assert both.compute()["rmse"] == pytest.approx(math.sqrt(0.29), abs=1e-6)
    assert all(v.dtype == torch.float64 for v in a.state().values())


def test_depth_metric_clamps_non_positive_predictions():
    m = DepthTask(min_depth=1e-3).new_metric()
    m.update(t([[[[-1.0]]]]), t([[[[1.0]]]]))
    assert m.compute()["abs_rel"] == pytest.approx(0.999, abs=1e-9)  # |0.001 - 1| / 1


def test_depth_metric_empty_is_nan():
    assert all(math.isnan(v) for v in DepthTask().new_metric().compute().values())


def test_depth_visualise_and_placeholder():
    task = DepthTask()
    pic = task.visualise(t([[[1.0, 2.0], [0.0, 4.0]]]))
    assert pic.shape == (2, 2, 3) and pic.dtype == np.uint8
    assert (pic[1, 0] == 0).all()  # no depth -> black
    assert (pic.reshape(4, 3)[[0, 1, 3]].sum(1) > 0).all()
    assert not (pic[0, 0] == pic[1, 1]).all()  # near and far get different colours
    fixed = DepthTask(vis_range=(1.0, 10.0)).visualise(t([[1.0, 3.0]]))
    assert fixed.shape == (1, 2, 3) and fixed.dtype == np.uint8
    assert (task.visualise(torch.zeros(3, 4)) == 0).all()
    ph = task.placeholder(3, 4)
    assert ph.shape == (1, 3, 4) and (ph == 0).all() and ph.is_floating_point()
    assert task.supervised_loss(torch.randn(1, 1, 3, 4), ph[None]).item() == 0.0


def test_depth_bad_options():
    with pytest.raises(ConfigError, match="did you mean 'silog'"):
        DepthTask(loss="sillog")
    with pytest.raises(ConfigError, match="min_depth"):
        DepthTask(min_depth=0.0)


# --------------------------------------------------------------------------------------------- semseg
def test_cross_entropy_with_ignore_hand_value():
    task = SemsegTask(num_classes=2)
    # pixels: [0, 0] label 0 -> ln 2; [ln 3, 0] label 1 -> -ln(1/4) = ln 4; third pixel ignored
    # sample 2: every pixel ignored -> 0
    logits = torch.zeros(2, 2, 1, 3)
    logits[0, 0, 0, 1] = LN3
    labels = torch.tensor([[[0, 1, 255]], [[255, 255, 255]]])
    logits.requires_grad_(True)
    loss = task.supervised_loss(logits, labels)
    assert loss[0].item() == pytest.approx((LN2 + 2 * LN2) / 2, abs=1e-6)  # 1.039721
    assert loss[1].item() == 0.0
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1].abs().sum() == 0


def test_kl_distill_temperature_two_hand_value():
    task = SemsegTask(num_classes=2, temperature=2.0)
    # teacher [2 ln 3, 0] / T -> softmax [3/4, 1/4]; student [0, 0] -> [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; × T² = 3 ln 1.5 - ln 2 = 0.523248
    student = torch.zeros(1, 2, 1, 2, requires_grad=True)
    teacher = torch.zeros(1, 2, 1, 2)
    teacher[:, 0] = 2 * LN3
    loss = task.distill_loss(student, teacher)
    assert loss.item() == pytest.approx(3 * math.log(1.5) - LN2, abs=1e-6)
    loss.sum().backward()
    # d/ds = T (p_s - p_t) / #pixels = 2 * (-1/4, +1/4) / 2
    assert torch.allclose(student.grad[0, :, 0, 0], t([-0.25, 0.25]), atol=1e-6)


def test_kl_distill_zero_for_equal_logits_and_analytic_gradient():
    torch.manual_seed(0)
    task = SemsegTask(num_classes=5, temperature=3.0)
    teacher = torch.randn(2, 5, 3, 4)
    assert task.distill_loss(teacher.clone(), teacher).abs().max().item() < 1e-6
    student = torch.randn(2, 5, 3, 4, requires_grad=True)
    task.distill_loss(student, teacher).sum().backward()
    T = 3.0
    expected = T * (torch.softmax(student.detach() / T, 1) - torch.softmax(teacher / T, 1)) / 12
    assert torch.allclose(student.grad, expected, atol=1e-6)
    # a teacher at half resolution is resized, not rejected
    assert task.distill_loss(student, teacher[..., ::2, ::2]).shape == (2,)


def test_semseg_metric_hand_confusion():
    # gt   [0, 0, 1, 1, 2, 255]  pred [0, 1, 1, 1, 0, 2]; class 3 absent from both
    # confusion (gt rows): c0 -> {0: 1, 1: 1}, c1 -> {1: 2}, c2 -> {0: 1}
    # IoU c0 = 1/(2+2-1) = 1/3, c1 = 2/(2+3-2) = 2/3, c2 = 0/(1+0) = 0; c3 excluded
    task = SemsegTask(num_classes=4, class_names=["a", "b", "c", "d"])
    m = task.new_metric()
    m.update(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 0, 1]]]))  # ids
    logits = torch.zeros(1, 4, 1, 3)
    for x, c in enumerate([1, 0, 2]):
        logits[0, c, 0, x] = 5.0
    m.update(logits, torch.tensor([[[1, 2, 255]]]))  # logits
    r = m.compute()
    assert r["miou"] == pytest.approx(1 / 3, abs=1e-12)
    assert r["pixel_acc"] == pytest.approx(3 / 5, abs=1e-12)
    assert r["iou/a"] == pytest.approx(1 / 3) and r["iou/b"] == pytest.approx(2 / 3) and r["iou/c"] == 0.0
    assert "iou/d" not in r
    assert m.state()["confusion"].tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    other = task.new_metric()
    other.load_state(m.state())
    assert other.compute() == r


@pytest.mark.parametrize("bad", [7, -3, 200])
def test_out_of_range_label_raises_data_error(bad):
    task = SemsegTask(num_classes=4)
    labels = torch.tensor([[[0, bad, 255]]])  # 200 must be caught even next to a legitimate 255
    with pytest.raises(DataError, match=rf"\[{bad}\].*0\.\.3"):
        task.supervised_loss(torch.zeros(1, 4, 1, 3), labels)
    with pytest.raises(DataError, match=str(bad)):
        task.new_metric().update(torch.zeros(1, 4, 1, 3), labels)


def test_semseg_visualise_palette_placeholder():
    task = SemsegTask(num_classes=3)
    ids = torch.tensor([[0, 1], [2, 255]])
    pic = task.visualise(ids)
    assert pic.shape == (2, 2, 3) and pic.dtype == np.uint8
    assert (pic[1, 1] == 0).all()
    pal = palette(3)
    assert (pic[0, 0] == pal[0]).all() and (pic[1, 0] == pal[2]).all()
    logits = torch.nn.functional.one_hot(torch.tensor([[2, 0]]), 3).permute(2, 0, 1).float()
    assert (task.visualise(logits)[0, 0] == pal[2]).all()
    over = task.visualise(ids, image=torch.zeros(3, 2, 2), alpha=0.5)
    assert (
        over.shape == (2, 2, 3) and (over[0, 0] == np.round(pal[0] * 0.5)).all() and (over[1, 1] == 0).all()
    )
    big = palette(64)
    assert big.dtype == np.uint8 and big.shape == (64, 3)
    assert (big.sum(1) > 0).all() and len({tuple(c) for c in big}) == 64
    ph = task.placeholder(2, 3)
    assert ph.dtype == torch.long and ph.shape == (2, 3) and (ph == 255).all()
    assert task.supervised_loss(torch.randn(1, 3, 2, 3), ph[None]).item() == 0.0


def test_semseg_bad_options():
    with pytest.raises(ConfigError, match="ignore_index"):
        SemsegTask(num_classes=3, ignore_index=1)
    with pytest.raises(ConfigError, match="class_names"):
        SemsegTask(num_classes=3, class_names=["a"])


# ------------------------------------------------------------------------------------------- registry
def test_registry_lookup():
    assert isinstance(build_task("depth"), DepthTask)
    seg = build_task("semseg", num_classes=3)
    assert isinstance(seg, SemsegTask) and seg.out_channels == 3
    assert {"depth", "semseg"} <= set(TASKS.names())
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        build_task("dpeth")


@pytest.mark.parametrize("task", [DepthTask(), SemsegTask(num_classes=3)])
def test_task_class_attributes(task):
    assert task.primary_metric in task.metric_directions
    head = task.build_head(8)
    assert head(torch.zeros(2, 8, 4, 4)).shape == (2, task.out_channels, 4, 4)


def test_class_balance_upweights_rare_classes_with_unit_mean():
    task = SemsegTask(num_classes=2, class_balance=1.0)
    labels = torch.tensor([[[0, 0, 0, 1]]])  # class 1 is 1/4 of the pixels
    valid = torch.ones_like(labels, dtype=torch.bool)
    w = task._pixel_weights(labels, valid)
    # inverse frequency: 4/3 for class 0 and 4 for class 1, rescaled to mean 1 -> 2/3 and 2
    torch.testing.assert_close(w, torch.tensor([[[2 / 3, 2 / 3, 2 / 3, 2.0]]]))
    logits = torch.zeros(1, 2, 1, 4)  # uniform prediction: every pixel's CE is ln 2
    assert task.supervised_loss(logits, labels).item() == pytest.approx(math.log(2))
    plain = SemsegTask(num_classes=2)
    logits[0, 0] = 2.0  # confident in class 0: the rare class-1 pixel now dominates the balanced loss
    assert task.supervised_loss(logits, labels).item() > plain.supervised_loss(logits, labels).item()


def test_depth_head_starts_at_init_depth():
    head = DepthTask(init_depth=4.0).build_head(8)
    out = head(torch.zeros(1, 8, 3, 3))
    torch.testing.assert_close(out.exp(), torch.full_like(out, 4.0), rtol=1e-5, atol=1e-5)


def test_hard_distillation_is_cross_entropy_on_teacher_argmax():
    task = SemsegTask(num_classes=2, distill="hard")
    student = torch.zeros(1, 2, 1, 2)  # uniform: CE is ln 2 whatever the label
    teacher = torch.tensor([[[[3.0, -1.0]], [[0.0, 2.0]]]])  # arg-max: class 0 then class 1
    assert task.distill_loss(student, teacher).item() == pytest.approx(math.log(2))
    student[0, 1, 0, 1] = 5.0  # agree with the teacher on pixel 2 only
    expected = (math.log(2) + math.log(1 + math.exp(-5.0))) / 2
    assert task.distill_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="did you mean 'hard'"):
        SemsegTask(num_classes=2, distill="hardd")


def test_scale_shift_invariant_depth_loss_is_zero_only_for_affine_predictions():
    from polydistill.tasks.depth import scale_shift_invariant_loss

    torch.manual_seed(0)
    teacher = torch.rand(2, 1, 8, 8) + 0.5
    valid = torch.ones_like(teacher, dtype=torch.bool)
    affine = 3.7 * teacher - 0.4
    assert torch.allclose(scale_shift_invariant_loss(affine, teacher, valid), torch.zeros(2), atol=1e-5)
    assert torch.allclose(scale_shift_invariant_loss(teacher, 10 * teacher + 2, valid), torch.zeros(2), atol=1e-5)
    other = torch.rand(2, 1, 8, 8)
    assert (scale_shift_invariant_loss(other, teacher, valid) > 0.1).all()
    # through the depth task: a student whose inverse depth is affine in the teacher's disparity
    task = build_task("depth")
    raw = -torch.log(2.0 * teacher + 0.1)  # student disparity = exp(-raw) = 2 * teacher + 0.1
    assert torch.allclose(task.distill_loss(raw, teacher, kind="inverse_relative"), torch.zeros(2), atol=1e-5)
    assert (task.distill_loss(raw, teacher, kind="relative") > 0).all()  # not affine in depth
    raw.requires_grad_(True)
    task.distill_loss(torch.log(other.clamp_min(0.1)).requires_grad_(), teacher, kind="relative").sum().backward()


def test_class_map_sums_probabilities_and_keeps_the_unmapped_mass(tmp_path):
    from polydistill.teachers.class_map import ClassMap

    cmap = ClassMap({"floor": ["rug", "floor"], "wall": [2]}, ["floor", "rug", "wall", "sky"], ["floor", "wall"])
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
    out = cmap.apply(probs.log()).exp().flatten()
    assert torch.allclose(out, torch.tensor([0.3, 0.3, 0.4]), atol=1e-6)  # floor+rug, wall, unmapped (sky)
    assert cmap.unmapped == ["sky"]
    task = build_task("semseg", num_classes=2)
    student = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)  # 50/50: exactly the renormalised teacher
    assert float(task.distill_loss(student, cmap.apply(probs.log()))) == pytest.approx(0.0, abs=1e-5)
    all_sky = cmap.apply(torch.tensor([-20.0, -20.0, -20.0, 20.0]).view(1, 4, 1, 1))
    assert float(task.distill_loss(torch.tensor([5.0, -5.0]).view(1, 2, 1, 1), all_sky)) < 1e-3  # no opinion
    with pytest.raises(ConfigError, match="many-to-one"):
        ClassMap({"floor": ["rug"], "wall": ["rug"]}, ["rug"], ["floor", "wall"])
    with pytest.raises(ConfigError, match="out of range"):
        ClassMap({"floor": [7]}, ["rug"], ["floor", "wall"])


def test_depth_predictions_are_capped_at_the_far_limit():
    """An undertrained network in eval mode can output log-depth 50; metrics must not overflow."""
    from polydistill.tasks import build_task
    from polydistill.tasks.depth import FAR_LIMIT_M

    raw = torch.tensor([[[[0.0, 50.0]]]])
    assert build_task("depth").predict(raw)[0, 0, 0].tolist() == pytest.approx([1.0, FAR_LIMIT_M])
    assert build_task("depth", max_depth=80.0).predict(raw)[0, 0, 0, 1].item() == pytest.approx(80.0)
