"""A run whose masks collapse (empty or all foreground on its own labelled images) says so: the fit report, the
model card and the CLI's warning."""

from __future__ import annotations

import json

import pytest

from napari_diffseg.cli._output import _print_trained, _TrainOutcome
from napari_diffseg.core.method.checkpoint import read_model_card
from napari_diffseg.core.method.events import COLLAPSE_RATIO, FitReport, collapse_of
from napari_diffseg.core.method.training import Done, train

from test_training import make_config, make_data


@pytest.mark.parametrize("predicted, true, verdict", [
    (0.0, 0.2, "empty"), (0.2 * COLLAPSE_RATIO * 0.9, 0.2, "empty"), (0.2 * COLLAPSE_RATIO * 1.1, 0.2, None),
    (0.15, 0.2, None), (1.0, 0.2, "all foreground"), (0.999, 0.9, "all foreground"), (0.99, 0.9, None),
    (0.0, 0.0, None), (1.0, 1.0, None), (0.0, None, None)])
def test_collapse_verdict(predicted, true, verdict):
    assert collapse_of(predicted, true) == verdict


def test_fit_report_keeps_the_verdict_through_the_model_card_and_reads_old_cards():
    fit = FitReport("teacher", 0.5, {"teacher": 0.0, "student": 0.4}, 12, 3.0, {"teacher": 0.0, "student": 0.1}, 0.2)
    assert fit.collapse == "empty" and "MASK COLLAPSED (empty)" in fit.describe()
    metrics = json.loads(json.dumps(fit.to_dict()))
    assert metrics["collapse"] == "empty" and FitReport.from_dict(metrics) == fit
    old = {"selected_twin": "teacher", "step": 3, "elapsed": 1.0, "validation": {"teacher": {"threshold": 0.5,
                                                                                             "dice": 0.7}}}
    assert FitReport.from_dict(old).collapse is None  # a card from before the check: no verdict, no alarm


def test_a_run_whose_masks_are_empty_reports_the_collapse(tmp_path, capsys):
    """A threshold no probability reaches after a few steps empties every mask: the engine's own check sees it
    (it compares the kept twin's masks of the labelled images with their labels), the card keeps it, and the
    CLI's summary warns that the run failed to learn."""
    data = make_data()
    out = tmp_path / "model"
    events = list(train(data, make_config(labels_only=True, threshold=0.9999), out))
    done = events[-1]
    assert isinstance(done, Done) and done.fit.collapse == "empty"
    assert done.fit.foreground["teacher"] == 0.0 and 0.0 < done.fit.true_foreground < 1.0
    assert read_model_card(out)["metrics"]["collapse"] == "empty"
    assert _print_trained(out, _TrainOutcome(done=done), True, "cpu") is True
    err = capsys.readouterr().err
    assert "diffseg: warning: the model's masks of its own labelled images are empty" in err


def test_a_healthy_run_has_no_collapse(tmp_path, capsys):
    """80 steps fit the blobs (20 do not yet: their masks are still empty, which the check rightly calls a
    collapse)."""
    data = make_data()
    out = tmp_path / "model"
    done = list(train(data, make_config(labels_only=True, max_steps=80), out))[-1]
    assert done.fit.collapse is None and 0.0 < done.fit.foreground["teacher"] < 1.0
    assert read_model_card(out)["metrics"]["collapse"] is None
    assert _print_trained(out, _TrainOutcome(done=done), True, "cpu") is False
    assert "warning" not in capsys.readouterr().err


def test_the_train_panel_warns_when_a_finished_run_collapsed(make_napari_viewer, monkeypatch, tmp_path):
    """The Train panel's handler of Done shows a napari warning for a collapsed fit, and none for a healthy one."""
    from napari.utils import notifications

    from napari_diffseg._widgets.train import TrainPanel

    warnings: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda message: warnings.append(str(message)))
    viewer = make_napari_viewer()
    _dock, panel = viewer.window.add_plugin_dock_widget("napari-diffseg", "Train")
    assert isinstance(panel, TrainPanel)
    healthy = FitReport("teacher", 0.5, {"teacher": 0.8}, 10, 1.0, {"teacher": 0.2}, 0.2)
    panel._on_event(Done(tmp_path, healthy))
    assert warnings == []
    collapsed = FitReport("teacher", 0.5, {"teacher": 0.3}, 10, 1.0, {"teacher": 0.999}, 0.2)
    panel._on_event(Done(tmp_path, collapsed))
    assert len(warnings) == 1 and "all foreground" in warnings[0] and "failed to learn" in warnings[0]
