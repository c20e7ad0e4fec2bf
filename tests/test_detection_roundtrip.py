"""Detection target encoding: perfect ground truth rendered into task-space maps decodes back to the boxes
(cell ownership of overlapping boxes, shared centre cells, a crowded round trip, the round-trip benchmark)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import detection_roundtrip as bench
from polydistill.tasks import build_task


def det(num_classes: int = 1):
    task = build_task("detection", num_classes=num_classes)
    task.stride = 4
    return task


def test_overlapping_pair_owns_its_centre_cells_and_decodes_exactly():
    """One class, a 10×10 grid (40×40 image, stride 4; cell (row r, col c) has centre (4c + 2, 4r + 2)).

    A = [0, 0, 40, 40]: centre (20, 20) -> cell (5, 5); σ = 0.54·40/6/4 = 0.9 cells, 2σ² = 1.62.
    B = [12, 12, 36, 28] (smaller): centre (24, 20) -> cell (5, 6); σx = 0.54·24/24 = 0.54 (2σx² = 0.5832),
    σy = 0.54·16/24 = 0.36 (2σy² = 0.2592). B's Gaussian at A's centre cell is exp(−1/0.5832) = 0.1800 > 0.01,
    so the old rule (the smallest box whose Gaussian covers the cell) gave A's centre cell B's distances: A
    decoded as B, and NMS merged the two.
    """
    task = det()
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [12.0, 12.0, 36.0, 28.0]])
    out = task.render(boxes, torch.tensor([0, 0]), None, (10, 10))
    heat, ltrb = out[0], out[1:]
    # A's centre cell (5, 5), centre (22, 22): heat 1 (its own peak); A's distances 22, 22, 40 − 22, 40 − 22
    assert float(heat[5, 5]) == 1.0
    assert ltrb[:, 5, 5].tolist() == [22.0, 22.0, 18.0, 18.0]
    # B's centre cell (5, 6), centre (26, 22): heat 1 (A's Gaussian there: exp(−1/1.62) = 0.5394); B's distances
    # 26 − 12, 22 − 12, 36 − 26, 28 − 22 — a 3×3 tie of two peaks of 1, both kept by decoding
    assert float(heat[5, 6]) == 1.0
    assert ltrb[:, 5, 6].tolist() == [14.0, 10.0, 10.0, 6.0]
    # cell (6, 6), centre (26, 26), nobody's centre: A exp(−2/1.62) = 0.2910, B exp(−1/0.2592) = 0.0211 (covers):
    # A has the higher value -> A's distances 26, 26, 14, 14 (the smallest-box rule gave B's)
    assert float(heat[6, 6]) == pytest.approx(0.2910, abs=1e-4)
    assert ltrb[:, 6, 6].tolist() == [26.0, 26.0, 14.0, 14.0]
    # cell (5, 7), centre (30, 22): A exp(−4/1.62) = 0.0847, B exp(−1/0.5832) = 0.1800 -> B's: 18, 10, 6, 6
    assert float(heat[5, 7]) == pytest.approx(0.1800, abs=1e-4)
    assert ltrb[:, 5, 7].tolist() == [18.0, 10.0, 6.0, 6.0]
    got, scores, labels = task.decode(out[None])[0]
    order = (got[:, 2] - got[:, 0]).argsort(descending=True)
    torch.testing.assert_close(got[order], boxes)
    assert scores.tolist() == [1.0, 1.0] and labels.tolist() == [0, 0]


def test_boxes_centred_in_one_cell_keep_the_larger_box():
    """A centre cell holds one set of distances: the larger box's (with scores: the higher score's)."""
    big, small = [0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 24.0, 24.0]  # both centred at (20, 20): cell (5, 5)
    task = det(num_classes=2)
    for order in ([small, big], [big, small]):
        same = task.render(torch.tensor(order), torch.tensor([0, 0]), None, (10, 10))
        got, _, _ = task.decode(same[None])[0]
        assert got.tolist() == [big]  # one peak, the larger box
    other = task.render(torch.tensor([small, big]), torch.tensor([1, 0]), None, (10, 10))
    got, _, labels = task.decode(other[None])[0]
    assert sorted(labels.tolist()) == [0, 1] and got.tolist() == [big, big]  # two peaks, one set of distances
    scored = task.render(torch.tensor([small, big]), torch.tensor([1, 0]), torch.tensor([0.9, 0.5]), (10, 10))
    # cell (5, 5), centre (22, 22): the small box's distances 22 − 16, 22 − 16, 24 − 22, 24 − 22 (higher score)
    assert scored[2:, 5, 5].tolist() == [6.0, 6.0, 2.0, 2.0]


def test_crowded_round_trip_keeps_almost_every_box():
    """20 images of 10 random overlapping boxes (3 classes) in 200×200: mAP 0.993, one box lost (two boxes of
    one class centred in one cell). The old smallest-box rule: 0.927, 10 boxes decoded with another box's edges."""
    task = det(num_classes=3)
    g = torch.Generator().manual_seed(7)
    metric = task.new_metric()
    for _ in range(20):
        wh = 8 + 72 * torch.rand(10, 2, generator=g)
        xy = (200 - wh) * torch.rand(10, 2, generator=g)
        labels = torch.randint(0, 3, (10,), generator=g)
        target = torch.cat([xy, xy + wh, labels[:, None].float()], 1)
        metric.update(task.render(target[:, :4], labels, None, (50, 50))[None], target[None])
    scores = metric.compute()
    assert scores["map"] >= 0.99 and scores["map50"] >= 0.99


def test_roundtrip_benchmark_smoke(tmp_path, capsys):
    bench.main(["--preset", "quick", "--test-images", "4", "--crowded-images", "1", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("roundtrip mAP: ") and float(lines[-1].split(": ")[1]) >= 0.99
    text = (tmp_path / "detection_roundtrip.md").read_text()
    assert "| demo test | 4 |" in text and "| crowded 20 | 1 | 20 |" in text
    assert (tmp_path / "detection_roundtrip.json").exists()
