"""Out-of-distribution scores on synthetic features: each separates a far cluster, the
threshold keeps its false-flag promise, and outlier exposure learns its rejection output."""

import numpy as np
import pytest

from clazzify.core.errors import ConfigError, DataError
from clazzify.training.ood import (
    Mahalanobis,
    NearestNeighbours,
    auroc,
    auroc_interval,
    energy_score,
    fit_rejection_head,
    flag_rates,
    msp_score,
    split_rejection,
    threshold_at_false_flag_rate,
)

pytestmark = pytest.mark.unit


def clusters(rng, n=60, d=16, k=3, spread=0.3):
    centres = rng.normal(0, 3, (k, d))
    labels = np.repeat(np.arange(k), n)
    return centres[labels] + rng.normal(0, spread, (k * n, d)), labels, centres


def test_msp_and_energy_rank_confident_logits_higher():
    logits = np.array([[8.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert msp_score(logits)[0] > 0.99 > msp_score(logits)[1]
    np.testing.assert_allclose(msp_score(logits).sum() > 0, True)
    assert energy_score(logits)[0] > energy_score(logits)[1]
    # logsumexp, exactly
    np.testing.assert_allclose(energy_score(np.array([[0.0, 0.0]])), [np.log(2)])


@pytest.mark.parametrize("make", [lambda x, y: Mahalanobis.fit(x, y), lambda x, y: NearestNeighbours.fit(x, k=5)])
def test_feature_scores_separate_a_far_cluster(make):
    rng = np.random.default_rng(0)
    x, y, centres = clusters(rng)
    fitted = make(x, y)
    near = centres[y[:30]] + rng.normal(0, 0.3, (30, x.shape[1]))
    far = rng.normal(0, 3, (30, x.shape[1])) + 12 * np.sign(rng.normal(size=x.shape[1]))
    assert auroc(fitted.score(near), fitted.score(far)) > 0.99


def test_mahalanobis_distance_matches_the_definition():
    rng = np.random.default_rng(1)
    x, y, _ = clusters(rng, n=40, d=4, k=2)
    m = Mahalanobis.fit(x, y)
    q = rng.normal(size=(5, 4))
    direct = np.array([[(qi - mu) @ m.precision @ (qi - mu) for mu in m.means] for qi in q]).min(1)
    np.testing.assert_allclose(m.score(q), -direct, rtol=1e-8)


def test_knn_k_is_checked():
    with pytest.raises(ConfigError, match="knn k=50"):
        NearestNeighbours.fit(np.ones((10, 3)), k=50)


@pytest.mark.parametrize("rate", [0.02, 0.05, 0.1])
def test_threshold_flags_at_most_the_rate_it_was_set_at(rate):
    scores = np.random.default_rng(2).normal(size=1000)
    t = threshold_at_false_flag_rate(scores, rate)
    flagged = (scores < t).mean()
    assert flagged <= rate
    assert flagged >= rate - 0.002  # and not far fewer: the largest such threshold


def test_threshold_refuses_bad_rates_and_empty_input():
    with pytest.raises(ConfigError, match="false-flag rate"):
        threshold_at_false_flag_rate(np.ones(10), 0.9)
    with pytest.raises(DataError):
        threshold_at_false_flag_rate(np.array([]), 0.02)


def test_auroc_and_its_interval():
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1.0])) == 0.0
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    lo, hi = auroc_interval(a, b, rounds=200)
    assert lo < auroc(a, b) < hi
    # grouped resampling is wider than resampling single photos when groups are tight
    groups = np.repeat(np.arange(4), 50)
    b_grouped = np.repeat(rng.normal(0, 1.5, 4), 50) + rng.normal(0, 0.05, 200)
    glo, ghi = auroc_interval(a, b_grouped, rounds=200, groups=groups)
    plo, phi = auroc_interval(a, b_grouped, rounds=200)
    assert ghi - glo > phi - plo


def test_flag_rates_counts_strictly_below():
    r = flag_rates(np.array([0.1, 0.5, 0.5, 0.9]), 0.5)
    assert (r["flagged"], r["n"], r["rate"]) == (1, 4, 0.25)
    assert r["interval"][0] < 0.25 < r["interval"][1]


def test_outlier_exposure_learns_to_reject_and_keeps_the_classes():
    rng = np.random.default_rng(4)
    x, y, centres = clusters(rng, n=80, d=8, k=3)
    outliers = rng.normal(0, 1, (60, 8)) + 10
    kernel, bias = fit_rejection_head(x, y, 3, outliers, l2=1.0)
    assert kernel.shape == (8, 4) and bias.shape == (4,)
    probs, score = split_rejection(x @ kernel + bias)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert (probs.argmax(1) == y).mean() > 0.98
    _, out_score = split_rejection((rng.normal(0, 1, (30, 8)) + 10) @ kernel + bias)
    assert auroc(score, out_score) > 0.99


def test_outlier_exposure_needs_outliers():
    with pytest.raises(DataError, match="not a class"):
        fit_rejection_head(np.ones((4, 2)), np.array([0, 0, 1, 1]), 2, np.empty((0, 2)))


def test_synthetic_outliers_are_varied_uint8_images():
    from clazzify.training.ood import SYNTHETIC_KINDS, synthetic_outliers

    images = synthetic_outliers(2 * len(SYNTHETIC_KINDS), 32, seed=0)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    stds = images.reshape(12, -1, 3).std(axis=1).max(axis=1)  # per channel, then the largest
    assert stds[0] == 0  # a flat colour
    assert (stds[1:len(SYNTHETIC_KINDS)] > 0).all()  # every other kind draws something
    np.testing.assert_array_equal(images, synthetic_outliers(12, 32, seed=0))  # deterministic


def _write_png(path, colour, size=40):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def test_load_outliers_reads_categories_and_sources_from_a_folder(tmp_path):
    from clazzify.training.ood import load_outliers

    _write_png(tmp_path / "plants" / "a.png", (0, 200, 0))
    _write_png(tmp_path / "plants" / "b.png", (0, 150, 0))
    _write_png(tmp_path / "screens" / "c.png", (200, 200, 200))
    (tmp_path / "screens" / "broken.jpg").write_bytes(b"not a photo")
    (tmp_path / "manifest.csv").write_text("file,category,repository\nplants/a.png,plants,r1\nplants/b.png,plants,r2\n")
    got = load_outliers(str(tmp_path), 32)
    assert got.images.shape == (3, 32, 32, 3) and got.images.dtype == np.uint8
    by_uri = {u.rsplit("/", 1)[1]: (c, g) for u, c, g in zip(got.uris, got.categories, got.groups, strict=True)}
    assert by_uri == {"a.png": ("plants", "r1"), "b.png": ("plants", "r2"), "c.png": ("screens", "screens")}
    assert [u.rsplit("/", 1)[1] for u in got.skipped] == ["broken.jpg"]


def test_load_outliers_reads_a_manifest_and_bounds_the_count(tmp_path):
    from clazzify.training.ood import load_outliers

    _write_png(tmp_path / "x.png", (1, 2, 3))
    (tmp_path / "ood.csv").write_text("uri,category\nx.png,flat\nx.png,flat\n")
    got = load_outliers(str(tmp_path / "ood.csv"), 16)
    assert got.categories == ["flat", "flat"] and len(got.images) == 2
    with pytest.raises(DataError, match="over the limit of 1"):
        load_outliers(str(tmp_path / "ood.csv"), 16, limit=1)
    with pytest.raises(DataError, match="no usable photo"):
        (tmp_path / "bad.csv").write_text("uri\nmissing.png\n")
        load_outliers(str(tmp_path / "bad.csv"), 16)


def test_fit_head_with_ood_exports_a_rejection_head_and_measures_it_by_source():
    from clazzify.training.head import fit_head
    from clazzify.training.ood import fit_head_with_ood, split_rejection

    rng = np.random.default_rng(5)
    x, y, centres = clusters(rng, n=60, d=8, k=3)
    xv, yv, _ = centres[np.repeat(np.arange(3), 30)] + rng.normal(0, 0.3, (90, 8)), np.repeat(np.arange(3), 30), None
    outliers = np.concatenate([rng.normal(0, 1, (20, 8)) + 10 * s for s in (1, -1, 2)])
    groups = ["a"] * 20 + ["b"] * 20 + ["c"] * 20
    fit = fit_head_with_ood(x, y, xv, yv, 3, l2=1.0, outliers=outliers, categories=groups, groups=groups, folds=3)
    assert fit.method == "outlier_exposure" and fit.kernel.shape == (8, 4)
    cv = fit.measured["cross_validated"]
    assert cv["folds"] == 3 and cv["outliers"] == 60 and set(cv["per_category"]) == {"a", "b", "c"}
    _, val_scores = split_rejection(xv @ fit.kernel + fit.bias)
    assert (val_scores < fit.threshold).mean() <= 0.02
    plain = fit_head_with_ood(x, y, xv, yv, 3, l2=1.0, fit_plain=lambda a, b, k: fit_head(a, b, k, l2=1.0))
    assert plain.method == "msp" and plain.kernel.shape == (8, 3) and "cross_validated" not in plain.measured


@pytest.mark.slow
def test_frozen_lite0_with_an_ood_source_exports_a_not_a_class_output(ood_run, ood_bundle):
    from clazzify.core.bundle import BundleMeta, load_predictor
    from clazzify.core.ood import OodRule, split_outputs
    from clazzify.training.data import read_column, read_rows
    from clazzify.training.ood import SYNTHETIC_KINDS

    bundle = ood_bundle  # trained with an ood_source: tests/conftest.py
    meta = BundleMeta.load(bundle)
    rule = OodRule.from_dict(meta.ood)
    assert rule.method == "outlier_exposure" and rule.false_flag_rate == 0.02
    cv = rule.measured["cross_validated"]  # a folder per kind: six groups, five folds
    assert cv["groups"] == len(SYNTHETIC_KINDS) and cv["folds"] == 5 and cv["outliers"] == 96
    val = [ood_run / "data" / "val.h5"]
    raw = load_predictor(bundle, "onnx").predict(read_rows(val, np.arange(len(read_column(val, "labels")))))
    assert raw.shape[1] == len(meta.class_names) + 1  # the classes and "not a class"
    probs, scores = split_outputs(raw, len(meta.class_names), rule.method)
    assert (scores < rule.threshold).mean() <= 0.02 + 1e-9  # the threshold's promise on val
    # the rejection head reads the taps too, standardised in training and folded into the
    # exported weights: the threshold above holds on the exported model only if the fold is right
    import onnx

    from clazzify.training.lite0 import TAP_PREFIX

    assert any(f"/{TAP_PREFIX}" in n.name for n in onnx.load(str(bundle / "model.onnx")).graph.node)


def test_ood_source_needs_a_frozen_backbone():
    from clazzify.training.train import TrainConfig

    with pytest.raises(ConfigError, match="ood_source needs frozen_backbone=true"):
        TrainConfig(architecture="compact", ood_source="/tmp/x")


def test_marked_photos_join_the_outliers_as_their_own_source(tmp_path):
    from clazzify.training.ood import MARKED, load_outliers

    _write_png(tmp_path / "marks" / "m.png", (9, 9, 9))
    got = load_outliers("", 16, extra=[str(tmp_path / "marks" / "m.png")])
    assert (got.categories, got.groups) == ([MARKED], [MARKED])


def test_a_relabel_csv_never_makes_not_a_class_a_class(tmp_path):
    from clazzify.core.ood import NOT_A_CLASS
    from clazzify.training.listing import read_relabel_overrides

    (tmp_path / "relabel.csv").write_text(f"uri,corrected_label\n/a.jpg,food\n/b.jpg,{NOT_A_CLASS}\n")
    assert [o.label for o in read_relabel_overrides(str(tmp_path / "relabel.csv")).values()] == ["food"]


def test_evaluation_reports_false_flags_catch_rates_and_the_champion():
    from types import SimpleNamespace

    from clazzify.core.ood import OodRule
    from clazzify.training.evaluate import ood_catch_rate, ood_markdown, ood_summary

    cv = {"folds": 2, "groups": 3, "outliers": 10, "auroc": 0.97,
          "caught": {"flagged": 9, "n": 10, "rate": 0.9, "interval": [0.6, 0.98]},
          "per_category": {"plants": {"flagged": 5, "n": 5, "rate": 1.0, "interval": [0.5, 1.0]}}}
    meta = SimpleNamespace(class_names=["a", "b"],
                           ood=OodRule("outlier_exposure", 0.5, 0.02, {"cross_validated": cv}).to_dict())
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.7])  # the third (a wrong answer) is flagged
    summary = ood_summary(meta, probs, labels, scores)
    assert summary["test_flagged"]["flagged"] == 1 and summary["test_flagged"]["rate"] == 0.25
    assert summary["accuracy_unflagged"] == 1.0 and summary["accuracy_all"] == 0.75
    assert ood_catch_rate(summary) == 0.9
    text = ood_markdown(summary, {"measured": {"cross_validated": {**cv, "caught": {**cv["caught"], "rate": 0.7}}}})
    assert "1 of 4 flagged" in text and "90.0% caught" in text and "| plants | 100.0% | 5 |" in text
    assert "champion's cross-validated catch rate: 70.0%" in text
    assert ood_summary(SimpleNamespace(class_names=["a"], ood=None), probs, labels, scores) is None
    assert "no unknown rule" in ood_markdown(None)
