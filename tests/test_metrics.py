"""Tests for segdistill.evaluation.metrics: counts, corner cases, mmseg's formulas, cityscapesscripts parity, DDP."""

from __future__ import annotations

import copy
import datetime
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from segdistill.errors import UserError
from segdistill.evaluation.metrics import ConfusionMatrix, MetricValueError, SegMetrics, compute_metrics

NAN = math.nan


def _same(a: float, b: float, tol: float = 1e-9) -> bool:
    """Equal within ``tol``, with NaN equal only to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def _random_samples(seed: int, count: int, num_classes: int, shape: tuple[int, int] = (12, 20)) -> Pairs:
    """Label/prediction pairs with about 10% ignored pixels and 70% correct predictions."""
    gen = torch.Generator().manual_seed(seed)
    samples: Pairs = []
    for _ in range(count):
        label = torch.randint(0, num_classes, shape, generator=gen)
        label[torch.rand(shape, generator=gen) < 0.1] = 255
        noise = torch.randint(0, num_classes, shape, generator=gen)
        pred = torch.where(torch.rand(shape, generator=gen) < 0.7, label.clamp(max=num_classes - 1), noise)
        samples.append((pred, label))
    return samples


# --- hand-computed cases ---------------------------------------------------------------------------


def test_counts_rows_are_ground_truth_and_columns_prediction() -> None:
    cm = ConfusionMatrix(3)
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm.update(pred, label)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    assert torch.equal(cm.matrix, expected)
    assert cm.matrix.dtype == torch.int64


def test_metrics_of_a_hand_computed_matrix() -> None:
    matrix = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 1, 1]])
    m = compute_metrics(matrix, ["road", "car", "sky"])
    # road: tp 3, gt 4, pred 5 -> IoU 3/6; car: tp 4, gt 6, pred 6 -> 4/8; sky: tp 1, gt 2, pred 1 -> 1/2.
    assert m.class_names == ("road", "car", "sky")
    assert m.iou == pytest.approx((50.0, 50.0, 50.0))
    assert m.acc == pytest.approx((75.0, 400 / 6, 50.0))
    assert m.support == (4, 6, 2)
    assert m.mIoU == pytest.approx(50.0)
    assert m.mAcc == pytest.approx((75.0 + 400 / 6 + 50.0) / 3)
    assert m.aAcc == pytest.approx(100 * 8 / 12)


def test_corner_cases_follow_mmseg() -> None:
    # 0: ordinary; 1: in the ground truth, never predicted; 2: predicted, never in the ground truth;
    # 3: in neither.
    matrix = torch.tensor(
        [
            [6, 0, 2, 0],
            [1, 0, 1, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    m = compute_metrics(matrix)
    assert m.class_names == ("0", "1", "2", "3")
    assert m.iou[0] == pytest.approx(100 * 6 / 9)
    assert m.acc[0] == pytest.approx(75.0)
    assert m.iou[1] == 0.0 and m.acc[1] == 0.0
    assert m.iou[2] == 0.0 and math.isnan(m.acc[2])
    assert math.isnan(m.iou[3]) and math.isnan(m.acc[3])
    # NaN classes are left out of the means, never counted as 0: mIoU over 3 classes, mAcc over 2.
    assert m.mIoU == pytest.approx((100 * 6 / 9 + 0 + 0) / 3)
    assert m.mAcc == pytest.approx((75.0 + 0.0) / 2)
    assert m.aAcc == pytest.approx(60.0)
    assert m.support == (8, 2, 0, 0)


def test_no_valid_pixel_gives_nan_everywhere() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.full((3,), 255))
    assert int(cm.matrix.sum()) == 0
    m = cm.compute()
    assert all(math.isnan(v) for v in m.iou + m.acc)
    assert math.isnan(m.mIoU) and math.isnan(m.mAcc) and math.isnan(m.aAcc)


def test_perfect_prediction() -> None:
    label = torch.tensor([[0, 1], [2, 255]])
    cm = ConfusionMatrix(4)
    cm.update(label.clamp(max=3), label)
    m = cm.compute()
    assert m.iou[:3] == (100.0, 100.0, 100.0) and math.isnan(m.iou[3])
    assert m.mIoU == 100.0 and m.mAcc == 100.0 and m.aAcc == 100.0


# --- ignore handling, dtypes, shapes ----------------------------------------------------------------


def test_ignored_pixels_never_count_whatever_was_predicted() -> None:
    label = torch.tensor([255, 255, 255, 1])
    cm_a, cm_b = ConfusionMatrix(3), ConfusionMatrix(3)
    cm_a.update(torch.tensor([0, 1, 2, 1]), label)
    cm_b.update(torch.tensor([2, 2, 2, 1]), label)
    assert torch.equal(cm_a.matrix, cm_b.matrix)
    assert int(cm_a.matrix.sum()) == 1 and int(cm_a.matrix[1, 1]) == 1


def test_custom_ignore_index() -> None:
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, -1, 2]))
    assert torch.equal(cm.matrix, torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1]]))
    # 255 is a plain out-of-range label once ignore_index is -1.
    with pytest.raises(MetricValueError, match=r"\[255\]"):
        cm.update(torch.tensor([0]), torch.tensor([255]))


def test_uint8_inputs_do_not_overflow() -> None:
    # 18 * 19 + 18 = 360 does not fit in uint8: the encoding must be computed in int64.
    label = torch.tensor([18, 18, 17, 255], dtype=torch.uint8)
    pred = torch.tensor([18, 17, 18, 0], dtype=torch.uint8)
    cm = ConfusionMatrix(19)
    cm.update(pred, label)
    assert int(cm.matrix[18, 18]) == 1 and int(cm.matrix[18, 17]) == 1 and int(cm.matrix[17, 18]) == 1
    assert int(cm.matrix.sum()) == 3


def test_matches_a_pixel_by_pixel_count_for_any_shape() -> None:
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 3, 7, 9), generator=gen)
    label[torch.rand(label.shape, generator=gen) < 0.2] = 255
    pred = torch.randint(0, 5, label.shape, generator=gen)
    cm = ConfusionMatrix(5)
    cm.update(pred, label)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for g, p in zip(label.flatten().tolist(), pred.flatten().tolist(), strict=False):
        if g != 255:
            expected[g, p] += 1
    assert torch.equal(cm.matrix, expected)
    # Accumulating the same batch again doubles every count.
    cm.update(pred.flatten(), label.flatten())
    assert torch.equal(cm.matrix, 2 * expected)


def test_reset_zeroes_the_counts() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    cm.reset()
    assert int(cm.matrix.sum()) == 0 and cm.matrix.shape == (3, 3)


def test_matrix_follows_the_first_batch_device_or_the_given_one() -> None:
    cm = ConfusionMatrix(2, device="cpu")
    assert cm.matrix.device.type == "cpu"
    lazy = ConfusionMatrix(2)
    lazy.update(torch.tensor([1]), torch.tensor([1]))
    assert lazy.matrix.device.type == "cpu" and int(lazy.matrix[1, 1]) == 1


# --- errors -----------------------------------------------------------------------------------------


def test_out_of_range_labels_raise_with_the_offending_values() -> None:
    cm = ConfusionMatrix(19)
    label = torch.tensor([0, 33, 24, 33, 255, 18, -3])
    with pytest.raises(ValueError) as info:
        cm.update(torch.zeros_like(label), label)
    message = str(info.value)
    assert "[-3, 24, 33]" in message and "label" in message and "\n" not in message
    assert isinstance(info.value, UserError)
    assert int(cm.matrix.sum()) == 0, "a rejected batch must not be counted"


def test_out_of_range_predictions_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(MetricValueError, match=r"pred holds values \[3, 7\]"):
        cm.update(torch.tensor([0, 3, 7]), torch.tensor([0, 1, 2]))
    # A bad prediction on an ignored pixel is harmless: it is never counted.
    cm.update(torch.tensor([0, 7]), torch.tensor([0, 255]))
    assert int(cm.matrix.sum()) == 1


def test_shape_and_dtype_mistakes_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(MetricValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="label"):
        cm.update(torch.zeros(2, dtype=torch.long), np.zeros(2, dtype=np.int64))  # type: ignore[arg-type]


@pytest.mark.parametrize(("num_classes", "ignore_index"), [(0, 255), (3, 1), (True, 255)])
def test_bad_constructor_arguments_raise(num_classes: int, ignore_index: int) -> None:
    with pytest.raises(MetricValueError):
        ConfusionMatrix(num_classes, ignore_index=ignore_index)


def test_compute_metrics_rejects_bad_inputs() -> None:
    with pytest.raises(MetricValueError, match="square"):
        compute_metrics(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(MetricValueError, match="2 class names"):
        compute_metrics(torch.zeros(3, 3, dtype=torch.long), ["a", "b"])
    with pytest.raises(MetricValueError, match="more than once"):
        compute_metrics(torch.zeros(2, 2, dtype=torch.long), ["a", "a"])
    with pytest.raises(MetricValueError, match="negative"):
        compute_metrics(torch.tensor([[1, -1], [0, 1]]))


# --- merge / state_dict -------------------------------------------------------------------------------


def test_merge_of_parts_equals_the_whole(tmp_path: Path) -> None:
    samples = _random_samples(seed=1, count=6, num_classes=5)
    whole, first, second = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    for i, (pred, label) in enumerate(samples):
        whole.update(pred, label)
        (first if i < 4 else second).update(pred, label)
    assert not torch.equal(first.matrix, whole.matrix)

    # The second part goes through a real file, as when workers save their partial results.
    path = tmp_path / "part.pt"
    torch.save(second.state_dict(), path)
    state = torch.load(path, weights_only=True)
    merged = ConfusionMatrix(5)
    merged.merge(first)
    merged.merge(state)
    assert torch.equal(merged.matrix, whole.matrix)
    assert merged.compute() == whole.compute()

    restored = ConfusionMatrix(5)
    restored.load_state_dict(whole.state_dict())
    assert torch.equal(restored.matrix, whole.matrix)


def test_state_dict_is_a_copy() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0]), torch.tensor([0]))
    state = cm.state_dict()
    cm.update(torch.tensor([0]), torch.tensor([0]))
    assert int(state["matrix"][0, 0]) == 1 and state["num_classes"] == 2 and state["ignore_index"] == 255


def test_merge_rejects_incompatible_matrices() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(MetricValueError, match="num_classes=4"):
        cm.merge(ConfusionMatrix(4))
    with pytest.raises(MetricValueError, match="ignore_index=0"):
        cm.merge({"num_classes": 3, "ignore_index": 0, "matrix": torch.zeros(3, 3)})
    with pytest.raises(MetricValueError, match="ignore_index=-1"):
        cm.merge(ConfusionMatrix(3, ignore_index=-1))
    with pytest.raises(MetricValueError, match="'matrix'"):
        cm.load_state_dict({"num_classes": 3, "ignore_index": 255})
    with pytest.raises(MetricValueError, match="2x2|3x3"):
        cm.load_state_dict({"num_classes": 3, "ignore_index": 255, "matrix": torch.zeros(2, 2)})


# --- SegMetrics output ----------------------------------------------------------------------------------


def test_to_dict_is_json_with_nan_as_none() -> None:
    m = compute_metrics(torch.tensor([[2, 1, 0], [0, 0, 0], [0, 0, 0]]), ["a", "b", "c"])
    data = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert data["mIoU"] == pytest.approx(m.mIoU) and data["aAcc"] == pytest.approx(100 * 2 / 3)
    assert data["per_class"]["b"] == {"IoU": 0.0, "Acc": None, "support": 0}
    assert data["per_class"]["c"] == {"IoU": None, "Acc": None, "support": 0}
    assert list(data["per_class"]) == ["a", "b", "c"]


def test_table_has_one_row_per_class_and_a_summary() -> None:
    m = compute_metrics(torch.tensor([[2, 1, 0], [0, 0, 0], [0, 0, 0]]), ["road", "a|b", "sky"])
    lines = m.table().splitlines()
    assert lines[0] == "| Class | IoU | Acc | Support |"
    assert lines[2] == "| road | 66.67 | 66.67 | 3 |"
    assert lines[3] == "| a&#124;b | 0.00 | nan | 0 |"
    assert lines[4] == "| sky | nan | nan | 0 |"
    assert lines[-3:] == ["| aAcc | mIoU | mAcc |", "|--:|--:|--:|", "| 66.67 | 33.33 | 66.67 |"]


def test_segmetrics_is_immutable() -> None:
    m = compute_metrics(torch.eye(2, dtype=torch.long))
    assert isinstance(m, SegMetrics)
    with pytest.raises(AttributeError):
        m.mIoU = 0.0  # type: ignore[misc]


# --- mmseg's formulas -----------------------------------------------------------------------------------


def _mmseg_style_metrics(samples: Pairs, num_classes: int) -> dict[str, np.ndarray]:
    """mmseg 1.x IoUMetric's recipe, written independently: float32 histograms per image, summed,
    then intersect/union and intersect/label, nanmean for the summary."""
    areas = np.zeros((4, num_classes), dtype=np.float32)
    for pred, label in samples:
        keep = label != 255
        p, g = pred[keep].float(), label[keep].float()
        hist = [torch.histc(x, bins=num_classes, min=0, max=num_classes - 1).numpy() for x in (p[p == g], p, g)]
        areas[0] += hist[0]
        areas[1] += hist[1] + hist[2] - hist[0]
        areas[2] += hist[1]
        areas[3] += hist[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = areas[0] / areas[1]
        acc = areas[0] / areas[3]
        aacc = areas[0].sum() / areas[3].sum()
    return {"IoU": iou, "Acc": acc, "aAcc": aacc}


def test_matches_mmseg_formulas_including_absent_classes() -> None:
    num_classes = 7
    samples = _random_samples(seed=3, count=4, num_classes=num_classes)
    # Class 6 vanishes from both sides; class 5 is only ever predicted, never in the ground truth.
    samples = [(torch.where(p == 6, 0, p), torch.where(g == 6, 0, g)) for p, g in samples]
    samples = [(p, torch.where(g == 5, 1, g)) for p, g in samples]
    cm = ConfusionMatrix(num_classes)
    for pred, label in samples:
        cm.update(pred, label)
    ours = cm.compute()
    ref = _mmseg_style_metrics(samples, num_classes)
    assert math.isnan(ours.iou[6]) and ours.iou[5] == 0.0 and math.isnan(ours.acc[5])
    for c in range(num_classes):
        assert _same(ours.iou[c], 100 * float(ref["IoU"][c]), 1e-4)
        assert _same(ours.acc[c], 100 * float(ref["Acc"][c]), 1e-4)
    assert ours.mIoU == pytest.approx(100 * float(np.nanmean(ref["IoU"])), abs=1e-4)
    assert ours.mAcc == pytest.approx(100 * float(np.nanmean(ref["Acc"])), abs=1e-4)
    assert ours.aAcc == pytest.approx(100 * float(ref["aAcc"]), abs=1e-4)


# --- cityscapesscripts parity -----------------------------------------------------------------------------


def _cityscapes_case(
    tmp_path: Path, num_images: int = 3, shape: tuple[int, int] = (48, 96)
) -> tuple[list[str], list[str], Pairs, tuple[int, int, int]]:
    """Write Cityscapes-style files; return prediction paths, ground-truth paths, our (pred, label) pairs
    and the (absent, predicted-only, never-predicted) train ids."""
    from cityscapesscripts.helpers.labels import labels

    train_to_label = np.zeros(256, dtype=np.uint8)
    label_to_train = np.full(256, 255, dtype=np.uint8)
    for lab in labels:
        if lab.id >= 0:
            label_to_train[lab.id] = lab.trainId if 0 <= lab.trainId < 255 else 255
        if not lab.ignoreInEval:
            train_to_label[lab.trainId] = lab.id
    ignored_ids = [lab.id for lab in labels if lab.ignoreInEval and lab.id >= 0]

    absent, pred_only, gt_only = 16, 15, 12  # train, bus, rider
    rng = np.random.default_rng(7)
    gt_classes = [c for c in range(19) if c not in (absent, pred_only)]
    predictable = [c for c in range(19) if c != absent]
    h, w = shape
    pred_files: list[str] = []
    gt_files: list[str] = []
    pairs: Pairs = []
    for i in range(num_images):
        gt = np.full(shape, rng.choice(gt_classes), dtype=np.uint8)
        for _ in range(12):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            gt[y : y + rng.integers(4, 20), x : x + rng.integers(4, 40)] = rng.choice(gt_classes)
        gt_ids = train_to_label[gt]
        for _ in range(4):  # regions whose labelIds are ignored in evaluation (trainId 255)
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            gt_ids[y : y + rng.integers(3, 12), x : x + rng.integers(3, 20)] = rng.choice(ignored_ids)
        # Make sure the never-predicted class is in the ground truth and the predicted-only class
        # lands on evaluated pixels.
        gt[-6:, -10:], gt[:3, :5] = gt_only, 0
        gt_ids[-6:, -10:], gt_ids[:3, :5] = train_to_label[gt_only], train_to_label[0]
        ignored = label_to_train[gt_ids] == 255

        pred = np.roll(gt, shift=(int(rng.integers(-2, 3)), int(rng.integers(-3, 4))), axis=(0, 1))
        for _ in range(5):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            pred[y : y + rng.integers(3, 15), x : x + rng.integers(3, 25)] = rng.choice(predictable)
        noise = rng.random(shape) < 0.05
        pred[noise] = rng.choice(predictable, size=int(noise.sum()))
        pred[pred == gt_only] = 11
        pred[:3, :5] = pred_only
        # The absent class is predicted only where the ground truth is ignored: it must stay out.
        pred[ignored & (rng.random(shape) < 0.5)] = absent

        stem = f"lindau_{i:06d}_000019"
        gt_path, pred_path = tmp_path / f"{stem}_gtFine_labelIds.png", tmp_path / f"{stem}_pred.png"
        Image.fromarray(gt_ids).save(gt_path)
        Image.fromarray(train_to_label[pred]).save(pred_path)
        gt_files.append(str(gt_path))
        pred_files.append(str(pred_path))
        # Our side reads the same files back and maps labelIds to trainIds, as a dataset would.
        label = label_to_train[np.array(Image.open(gt_path))]
        pairs.append((torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label)))
    return pred_files, gt_files, pairs, (absent, pred_only, gt_only)


def test_matches_cityscapesscripts(tmp_path: Path) -> None:
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import trainId2label

    pred_files, gt_files, pairs, (absent, pred_only, gt_only) = _cityscapes_case(tmp_path)
    args = copy.copy(cs_eval.args)  # the module keeps one global; leave it untouched
    args.evalInstLevelScore = False  # nIoU needs *_instanceIds.png and is not what we compare
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    result = cs_eval.evaluateImgLists(pred_files, gt_files, args)

    cm = ConfusionMatrix(19)
    for pred, label in pairs:
        cm.update(pred, label)
    names = [trainId2label[t].name for t in range(19)]
    ours = cm.compute(names)

    # Same counts: their labelId matrix restricted to the 19 evaluated classes is ours.
    label_ids = [trainId2label[t].id for t in range(19)]
    theirs = np.array(result["confMatrix"], dtype=np.int64)[np.ix_(label_ids, label_ids)]
    assert np.array_equal(theirs, cm.matrix.numpy())

    scores = result["classScores"]
    for t, name in enumerate(names):
        assert _same(ours.iou[t] / 100, scores[name], 1e-6), name
    # Their corner cases are ours: absent from both -> NaN, predicted only -> 0, never predicted -> 0.
    assert math.isnan(scores[names[absent]]) and math.isnan(ours.iou[absent])
    assert scores[names[pred_only]] == 0.0 and int(cm.matrix[:, pred_only].sum()) > 0
    assert scores[names[gt_only]] == 0.0 and ours.support[gt_only] > 0 and ours.acc[gt_only] == 0.0
    # Their average is a nanmean over the 19 classes (ignored labelIds score NaN too and drop out).
    assert result["averageScoreClasses"] == pytest.approx(float(np.nanmean([scores[n] for n in names])), abs=1e-12)
    assert ours.mIoU / 100 == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    assert int(sum(ours.support)) == int(sum(int((label != 255).sum()) for _, label in pairs))


# --- distributed ------------------------------------------------------------------------------------------


def test_all_reduce_is_a_no_op_without_a_process_group() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _all_reduce_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A client of the parent's store: the port is already bound, so no other process can take it.
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        cm = ConfusionMatrix(5)
        for pred, label in _random_samples(seed=11, count=6, num_classes=5)[rank::world_size]:
            cm.update(pred, label)
        before = cm.matrix.clone()
        cm.all_reduce()
        torch.save({"before": before, "after": cm.matrix}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes(tmp_path: Path) -> None:
    world_size = 2
    # The store binds port 0 (the OS picks a free port) and stays up while the workers join through it.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))
    mp.spawn(_all_reduce_worker, args=(world_size, store.port, str(tmp_path)), nprocs=world_size, join=True)
    single = ConfusionMatrix(5)
    for pred, label in _random_samples(seed=11, count=6, num_classes=5):
        single.update(pred, label)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    assert not torch.equal(parts[0]["before"], single.matrix), "each rank must see only part of the data"
    assert torch.equal(parts[0]["before"] + parts[1]["before"], single.matrix)
    for part in parts:
        assert torch.equal(part["after"], single.matrix)
