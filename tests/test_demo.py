"""The README's demo, with its quick schedule: it runs end to end and segments well."""


def test_demo_quality_and_outputs(demo_run):
    scores, out = demo_run
    assert scores.pooled.at(0.5).f1 >= 0.9
    assert scores.pooled.seg >= 0.6
    assert len(list((out / "labels").glob("*_labels.tif"))) == 3
    assert len(list((out / "labels").glob("*_overlay.png"))) == 3
    assert (out / "metrics" / "metrics.csv").exists() and (out / "model" / "loss.png").exists()
