"""The README's demo, with its quick schedule: it runs end to end, segments the easy set well and scores the
realistic set next to the baseline."""
import numpy as np
import tifffile


def test_demo_quality_and_outputs(demo_run):
    results, out = demo_run
    assert set(results) == {"cells", "fluo_nuclei"}
    cells = results["cells"]["cellulus-fast"]
    assert cells.pooled.at(0.5).f1 >= 0.9
    assert cells.pooled.seg >= 0.6
    for name, per_method in results.items():
        assert set(per_method) == {"cellulus-fast", "Otsu + watershed"}
        truth = [tifffile.imread(p) for p in sorted((out / name / "data" / "test_gt").glob("*.tif"))]
        n_true = sum(len(np.unique(t)) - 1 for t in truth)
        assert all(r.pooled.n_true == n_true and len(r.per_image) == 3 for r in per_method.values())
        predicted = [tifffile.imread(p) for p in sorted((out / name / "labels").glob("*_labels.tif"))]
        assert len(predicted) == 3 and [p.shape for p in predicted] == [t.shape for t in truth]
        assert sum(len(np.unique(p)) - 1 for p in predicted) == per_method["cellulus-fast"].pooled.n_pred
        assert len(list((out / name / "labels").glob("*_overlay.png"))) == 3
        assert (out / name / "metrics" / "metrics.csv").exists()
        assert (out / name / "metrics_otsu_watershed" / "metrics.json").exists()
        assert (out / name / "model" / "loss.png").exists()
    summary = (out / "summary.txt").read_text()
    assert summary.count("Otsu + watershed") == 2 and summary.count("cellulus-fast") == 2
