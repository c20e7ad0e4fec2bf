"""Δm against published anchors (SAK, ICLR 2025, as re-reported by PRISM) and hand-computed cases."""

import math

import pytest

from polydistill.evaluation.delta_m import delta_m, retention

NYUD_DIRS = {
    "semseg": {"miou": True},
    "depth": {"rmse": False},
    "normals": {"merr": False},
    "boundary": {"odsf": True},
}
NYUD_PRIMARY = {"semseg": "miou", "depth": "rmse", "normals": "merr", "boundary": "odsf"}
PASCAL_DIRS = {
    "semseg": {"miou": True},
    "parts": {"miou": True},
    "saliency": {"maxf": True},
    "normals": {"merr": False},
    "boundary": {"odsf": True},
}
PASCAL_PRIMARY = {
    "semseg": "miou",
    "parts": "miou",
    "saliency": "maxf",
    "normals": "merr",
    "boundary": "odsf",
}


def table(dirs, values):
    return {task: {next(iter(ms)): v} for (task, ms), v in zip(dirs.items(), values)}


def test_sak_nyud_anchor():
    sak = table(NYUD_DIRS, [59.93, 0.4942, 17.60, 78.60])
    stl = table(NYUD_DIRS, [51.15, 0.5792, 19.77, 77.35])
    assert delta_m(sak, stl, NYUD_DIRS, primary=NYUD_PRIMARY) == pytest.approx(11.11, abs=0.005)


def test_sak_pascal_anchor():
    sak = table(PASCAL_DIRS, [81.88, 74.30, 84.79, 14.02, 74.09])
    stl = table(PASCAL_DIRS, [80.25, 70.54, 84.54, 13.57, 74.22])
    assert delta_m(sak, stl, PASCAL_DIRS, primary=PASCAL_PRIMARY) == pytest.approx(0.83, abs=0.005)


def test_sak_pascal_vit_large_anchor():
    sak = table(PASCAL_DIRS, [84.01, 76.99, 84.65, 13.82, 76.27])
    stl = table(PASCAL_DIRS, [81.61, 72.77, 83.80, 13.87, 75.24])
    assert delta_m(sak, stl, PASCAL_DIRS, primary=PASCAL_PRIMARY) == pytest.approx(2.30, abs=0.005)
    # one metric per task: the three conventions coincide, and `primary` may be left implicit
    for conv in ("task_avg", "flat"):
        assert delta_m(sak, stl, PASCAL_DIRS, convention=conv) == pytest.approx(2.2967, abs=1e-4)


# Task A: a1 ↑ 110 vs 100 -> +10 %, a2 ↓ 1.2 vs 1.0 -> -20 %; task B: b1 ↑ 104 vs 100 -> +4 %
DIRS = {"A": {"a1": True, "a2": False}, "B": {"b1": True}}
RES = {"A": {"a1": 110.0, "a2": 1.2}, "B": {"b1": 104.0}}
BASE = {"A": {"a1": 100.0, "a2": 1.0}, "B": {"b1": 100.0}}


def test_conventions_differ_on_two_metric_task():
    assert delta_m(RES, BASE, DIRS, convention="task_avg") == pytest.approx(-0.5)  # ((10-20)/2 + 4)/2
    assert delta_m(RES, BASE, DIRS, convention="flat") == pytest.approx(-2.0)  # (10 - 20 + 4)/3
    assert delta_m(RES, BASE, DIRS, primary={"A": "a1", "B": "b1"}) == pytest.approx(7.0)  # (10 + 4)/2
    assert delta_m(RES, BASE, DIRS, primary={"A": "a2", "B": "b1"}) == pytest.approx(-8.0)  # (-20 + 4)/2


def test_errors():
    with pytest.raises(ValueError, match="lacks metric 'A/a2'"):
        delta_m({"A": {"a1": 1.0}, "B": {"b1": 1.0}}, BASE, DIRS, convention="flat")
    with pytest.raises(ValueError, match="baseline has no task 'B'"):
        delta_m(RES, {"A": BASE["A"]}, DIRS, convention="flat")
    with pytest.raises(ValueError, match="non-zero"):
        delta_m(RES, {"A": {"a1": 0.0, "a2": 1.0}, "B": {"b1": 1.0}}, DIRS, convention="flat")
    with pytest.raises(ValueError, match="choose from: primary, task_avg, flat"):
        delta_m(RES, BASE, DIRS, convention="mean")
    with pytest.raises(ValueError, match=r"primary\['A'\]"):
        delta_m(RES, BASE, DIRS)  # task A has two metrics: which one is primary must be said
    with pytest.raises(ValueError, match="has no direction"):
        delta_m(RES, BASE, DIRS, primary={"A": "a3", "B": "b1"})


def test_retention_both_directions():
    dirs = {"semseg": {"miou": True}, "depth": {"rmse": False, "delta1": True}}
    student = {"semseg": {"miou": 45.0}, "depth": {"rmse": 0.5, "delta1": 0.8}}
    teacher = {"depth": {"rmse": 0.45, "delta1": 0.9}}  # this teacher covers depth only
    r = retention(student, teacher, dirs)
    assert set(r) == {"depth"}
    assert r["depth"]["rmse"] == pytest.approx(0.9)  # lower is better: t / s
    assert r["depth"]["delta1"] == pytest.approx(0.8 / 0.9)  # higher is better: s / t
    r2 = retention(student, {"semseg": {"miou": 50.0}}, dirs)
    assert r2 == {"semseg": {"miou": pytest.approx(0.9)}}
    assert math.isnan(retention(student, {"semseg": {"miou": 0.0}}, dirs)["semseg"]["miou"])
