"""The review loop at a laptop's size (issue 26), in a real napari window under Xvfb: the review keys wherever the
focus is in a panel, panels that fit a 340 px dock, status lines that stay true, closing during training that
asks and leaves a resumable run, a read-only project, the loss plot's parts, the view and Undo, the Train panel's
help."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import QApplication, QLineEdit, QScrollArea

from napari_diffseg import _state
from napari_diffseg._state import Status, folder_writable, state_for_viewer, stopped_run
from napari_diffseg._widgets import _closing, _layers
from napari_diffseg._widgets._common import DOCK_WIDTH
from napari_diffseg._widgets._loss_plot import PLOT_HELP
from napari_diffseg._widgets.predict import OUTPUT_DISK, OUTPUT_LAYER, SOURCE_LAYER
from napari_diffseg._widgets.train import ADVANCED_HELP, STAGE_NAMES
from napari_diffseg._workers import error_message
from napari_diffseg.core.method.checkpoint import LAST
from napari_diffseg.core.method.config import TrainConfig
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.data.io import format_duration
from napari_diffseg.core.project.store import ImageStatus, Project
from test_widgets import (PLUGIN, TRAIN_TIMEOUT_MS, _project_with_pseudo_labels, _small_project, open_panels,
                          tiny_config, wait_until_finished)


def _queue_row_centre(review, row: int):
    return review.queue_list.visualItemRect(review.queue_list.item(row)).center()


def assert_panels_fit_the_dock(viewer, qtbot, tabs, dock, names: list[str]) -> None:
    """With the dock at DOCK_WIDTH, each named panel shows without a horizontal scrollbar."""
    viewer.window._qt_window.resizeDocks([dock], [DOCK_WIDTH], Qt.Horizontal)
    for name in names:
        tabs.show_panel(name)
        scroll = tabs.currentWidget()
        assert isinstance(scroll, QScrollArea)
        qtbot.waitUntil(lambda: dock.width() <= DOCK_WIDTH + 2, timeout=5_000)
        qtbot.wait(50)
        assert not scroll.horizontalScrollBar().isVisible(), name


def test_review_keys_work_wherever_the_focus_is_in_the_panels(make_napari_viewer, qtbot, tmp_path, shown):
    """A click on a queue row gives the list the focus; A, sent to the focused widget as a keyboard would, still
    accepts (the list used to take it as type-ahead search); so do N on a focused button and keys in another
    DiffSeg panel; a text field keeps its letters; Escape gives the keyboard to the canvas."""
    viewer = make_napari_viewer(show=True)
    review = viewer.window.add_plugin_dock_widget(PLUGIN, "Review")[1]
    predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")[1]
    project = _project_with_pseudo_labels(tmp_path / "proj")
    review.state.set_project(project)
    qtbot.waitUntil(lambda: review.current_name() is not None, timeout=10_000)
    queue = list(review.queue)
    window = viewer.window._qt_window
    window.activateWindow()  # shortcuts, like a keyboard, need the window to be the active one
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)

    qtbot.mouseClick(review.queue_list.viewport(), Qt.LeftButton, pos=_queue_row_centre(review, 1))
    qtbot.waitUntil(lambda: review.current_name() == queue[1], timeout=5_000)
    review.queue_list.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is review.queue_list, timeout=5_000)
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key_A)
    assert project.record(queue[1]).status == ImageStatus.ACCEPTED

    review.show_pseudo.setFocus()  # a check box
    qtbot.waitUntil(lambda: QApplication.focusWidget() is review.show_pseudo, timeout=5_000)
    shown_before = review.current_name()
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key_R)
    assert project.record(shown_before).status == ImageStatus.REJECTED
    assert review.show_pseudo.isChecked()  # the key did not toggle the box

    predict.run_button.setFocus()  # a button of another DiffSeg panel
    qtbot.waitUntil(lambda: QApplication.focusWidget() is predict.run_button, timeout=5_000)
    before = review.current_name()
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key_N, Qt.ShiftModifier)
    assert review.current_name() != before or len(review.queue) < 2

    edit = predict.out_row.edit  # a text field keeps its letters
    predict.output_combo.setCurrentText(OUTPUT_DISK)
    edit.setFocus()
    qtbot.waitUntil(lambda: isinstance(QApplication.focusWidget(), QLineEdit), timeout=5_000)
    remaining = list(review.queue)
    qtbot.keyClicks(edit, "nar")
    assert edit.text() == "nar" and review.queue == remaining

    review.queue_list.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is review.queue_list, timeout=5_000)
    canvas = viewer.window._qt_viewer.canvas.native
    painted = np.asarray(review.pseudo_layer().data).copy()
    qtbot.keyClick(review.queue_list, Qt.Key_Escape)  # back to the canvas, nothing painted
    qtbot.waitUntil(lambda: QApplication.focusWidget() is canvas, timeout=5_000)
    np.testing.assert_array_equal(review.pseudo_layer().data, painted)
    review.queue_list.setFocus()
    review.canvas_button.click()  # the same as a button
    qtbot.waitUntil(lambda: QApplication.focusWidget() is canvas, timeout=5_000)

    letters = predict._shortcuts[:-1]  # without the Review panel the letters are the widgets' own again
    assert all(shortcut.isEnabled() for shortcut in letters)
    viewer.window._wrapped_dock_widgets[f"Review ({PLUGIN})"].destroyOnClose()
    qtbot.waitUntil(lambda: not any(shortcut.isEnabled() for shortcut in letters), timeout=5_000)
    assert shown["error"] == []


def test_every_panel_fits_a_340_px_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """At 1280 x 800 with long texts (the longest stage line, a stopped run to resume, a deep project folder,
    read-only notes, the Advanced settings open) no panel needs more than 340 px, and the "all panels" dock at
    340 px shows no horizontal scrollbar on any tab."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    dock, tabs = viewer.window.add_plugin_dock_widget(PLUGIN, "DiffSeg (all panels)")
    state = state_for_viewer(viewer)
    folder = tmp_path / ("a_rather_long_folder_name_for_the_lab_server_" * 3) / "proj"
    folder.parent.mkdir(parents=True)
    _project_with_pseudo_labels(folder)
    monkeypatch.setattr(_state, "folder_writable", lambda _folder: False)  # every read-only note shows
    tabs.panels["Project"].open_project(folder)
    train = tabs.panels["Train"]
    train.advanced_toggle.setChecked(True)
    train.resume.setVisible(True)
    train.stage_label.setText(f"stage: {STAGE_NAMES['pseudo_labels']} · 1000/1000")
    train.status_label.setText("Stopped at step 123456 of round 12; last.pt saved. Start resumes it (untick "
                               "'resume' to train the round from its start).")
    for name, panel in tabs.panels.items():
        assert panel.minimumSizeHint().width() <= DOCK_WIDTH, name
    assert_panels_fit_the_dock(viewer, qtbot, tabs, dock, list(tabs.panels))
    label = tabs.panels["Project"].project_label
    assert label.full_text() == str(Project.open(folder).folder) and "…" in label.text()  # cut in the middle
    assert label.text().endswith("proj")


def test_closing_during_training_asks_and_stop_leaves_a_run_the_reopened_project_resumes(
        make_napari_viewer, qtbot, tmp_path, shown, monkeypatch):
    viewer = make_napari_viewer(show=True)
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    state = train.state
    _small_project(tmp_path / "proj")
    state.set_project(Project.open(tmp_path / "proj"))
    state.config = tiny_config(max_steps=100_000)
    answers: list[str] = []
    asked: list[str] = []

    def answer(_parent, closing):
        asked.append(closing)
        return answers.pop(0)

    monkeypatch.setattr(_closing, "ask_while_training", answer)
    window = viewer.window._qt_window
    train.start_button.click()
    qtbot.waitUntil(lambda: state.step >= 3, timeout=TRAIN_TIMEOUT_MS)

    answers.append(_closing.CANCEL)  # the window: cancel
    event = QCloseEvent()
    QApplication.sendEvent(window, event)
    assert asked == ["napari"] and not event.isAccepted() and state.status == Status.RUNNING

    answers.append(_closing.CANCEL)  # the dock's close button: cancel
    train_dock.title.close_button.click()
    assert asked[-1] == "this panel" and train_dock.widget() is train and state.status == Status.RUNNING

    answers.append(_closing.STOP)  # the window: stop and keep the run
    event = QCloseEvent()
    QApplication.sendEvent(window, event)
    assert event.isAccepted() and state.status == Status.IDLE and state.worker is None
    stopped = stopped_run(state.project)
    assert stopped is not None and stopped.round == 1 and stopped.step >= 3
    assert (state.project.checkpoints_dir(1) / LAST).is_file()
    assert train.stage_label.text() == f"stage: stopped at step {stopped.step}"

    # napari again, the same project: the stopped run is offered, and Start resumes it
    viewer2 = make_napari_viewer(show=True)
    panels = open_panels(viewer2)
    train2, state2 = panels["Train"], panels["Train"].state
    panels["Project"].open_project(tmp_path / "proj")
    assert not train2.resume.isHidden() and train2.resume.isChecked()
    assert f"from step {stopped.step}" in train2.resume.toolTip()
    assert train2.status_label.text().startswith(f"Stopped at step {stopped.step} of round 1")
    state2.config = tiny_config(max_steps=stopped.step + 2)
    started = []
    state2.training_event.connect(lambda event: started.append(event) if hasattr(event, "resumed") else None)
    train2.start_button.click()
    wait_until_finished(qtbot, state2)
    assert state2.status == Status.DONE and started and started[0].resumed
    assert state2.step == stopped.step + 2
    assert train2.stage_label.text() == f"stage: finished at step {stopped.step + 2}"
    assert train2.resume.isHidden() and stopped_run(state2.project) is None  # finished: nothing to resume
    assert shown["error"] == []


def test_keep_training_closes_the_dock_at_once_and_napari_when_the_round_ends(make_napari_viewer, qtbot, tmp_path,
                                                                               shown, monkeypatch):
    """The third answer: the dock closes while the round trains on; napari's window stays open, says it will close,
    and closes itself once the round has finished (its model written, nothing left to resume)."""
    viewer = make_napari_viewer(show=True)
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    state = train.state
    _small_project(tmp_path / "proj")
    state.set_project(Project.open(tmp_path / "proj"))
    state.config = tiny_config(max_steps=16)
    asked: list[str] = []
    monkeypatch.setattr(_closing, "ask_while_training",
                        lambda _parent, closing: asked.append(closing) or _closing.KEEP_TRAINING)
    window = viewer.window._qt_window
    closed: list[bool] = []
    window.close = lambda: closed.append(True)  # (a real close here would be closed again by the fixture, on a
    # deleted window; not monkeypatch: its undo would leave the bound method in the window's dict, a cycle)
    train.start_button.click()
    qtbot.waitUntil(lambda: state.step >= 2, timeout=TRAIN_TIMEOUT_MS)

    train_dock.title.close_button.click()
    assert asked == ["this panel"] and state.status == Status.RUNNING
    qtbot.waitUntil(lambda: not train_dock.isVisible(), timeout=5_000)  # closed at once, the round goes on

    event = QCloseEvent()
    QApplication.sendEvent(window, event)
    assert asked[-1] == "napari" and not event.isAccepted() and window.isVisible()
    assert state.status == Status.RUNNING and shown["info"][-1] == "napari closes when the round ends"
    assert closed == []
    wait_until_finished(qtbot, state)
    assert state.status == Status.DONE and state.step == 16
    assert closed == [True]  # napari's window closed itself once the round had ended
    del window.close
    project = Project.open(tmp_path / "proj")
    assert (project.checkpoints_dir(1) / LAST).is_file() and stopped_run(project) is None
    assert shown["error"] == []


def test_status_lines_after_a_failure_and_with_no_project(make_napari_viewer, qtbot, tmp_path, shown):
    viewer = make_napari_viewer()
    panels = open_panels(viewer)
    train, state = panels["Train"], panels["Train"].state
    assert train.stage_label.text() == "stage: -"
    _small_project(tmp_path / "proj", labelled=0)
    panels["Project"].open_project(tmp_path / "proj")
    state.config = tiny_config()
    train.start_button.click()
    wait_until_finished(qtbot, state)
    assert state.status == Status.FAILED
    assert train.stage_label.text() == "stage: did not start"  # not "starting (reading the images)"
    assert train.status_label.text().startswith("Failed: no labelled image")


def test_a_read_only_project_opens_read_only_and_still_predicts(make_napari_viewer, qtbot, tmp_path, shown,
                                                               monkeypatch):
    folder = tmp_path / "proj"
    _project_with_pseudo_labels(folder)
    assert folder_writable(folder)
    if os.geteuid() != 0:  # as root, permission bits do not stop a write: the probe cannot see them
        os.chmod(folder, 0o555)
        try:
            assert not folder_writable(folder)
        finally:
            os.chmod(folder, 0o755)
    viewer = make_napari_viewer()
    panels = open_panels(viewer)
    state = panels["Project"].state
    state.config = tiny_config()
    panels["Project"].open_project(folder)  # a model to predict with, trained while the folder was writable
    panels["Train"].start_button.click()
    wait_until_finished(qtbot, state)
    assert state.status == Status.DONE
    model_dir = state.project.latest_model_dir()

    monkeypatch.setattr(_state, "folder_writable", lambda _folder: False)  # the folder is read-only from now on
    viewer2 = make_napari_viewer()
    panels = open_panels(viewer2)
    state = panels["Project"].state
    project = panels["Project"].open_project(folder)
    assert state.read_only
    warnings = [message for message in shown["warning"] if "read-only" in message]
    assert len(warnings) == 1 and warnings[0].endswith(str(project.folder))  # said once, the reason first
    review, annotate, train = panels["Review"], panels["Annotate"], panels["Train"]
    assert panels["Project"].read_only_label.isVisibleTo(panels["Project"])
    assert not panels["Project"].add_files_button.isEnabled()
    review.show_image(review.queue[0])  # looking still works
    assert review.current_name() == review.queue[0]
    for button in (review.accept_button, review.reject_button, review.undo_button, review.next_round_button):
        assert not button.isEnabled(), button.text()
    assert not train.start_button.isEnabled() and train.status_label.text().startswith("Read-only project")
    assert not train.pretrain_check.isEnabled()
    annotate.open_image(project.names()[0])
    assert not annotate.save_button.isEnabled()
    assert review.accept() is None  # a key press or a script gets the reason, ending with the path
    assert shown["error"][-1].startswith("cannot accept: the project is open read-only")
    assert shown["error"][-1].endswith(str(project.folder))
    assert project.record(review.queue[0]).status == ImageStatus.PSEUDO

    predict = panels["Predict"]  # predicting still works: to a layer, and to a folder elsewhere
    assert predict.model_row.text() == str(model_dir)
    proposed = []  # exporting the model: the dialog proposes a file outside the read-only project

    def save_dialog(_parent, _title, path, _filter):
        proposed.append(Path(path))
        return "", ""  # the user cancels

    monkeypatch.setattr("qtpy.QtWidgets.QFileDialog.getSaveFileName", save_dialog)
    assert predict.export_button.isEnabled() and predict.export() is None
    assert proposed and project.folder not in proposed[0].parents and proposed[0].suffix == ".zip"
    image = viewer2.add_image(project.image(project.names()[0]), name="new image")
    predict.source_combo.setCurrentText(SOURCE_LAYER)
    predict.layer_combo.setCurrentText(image.name)
    predict.output_combo.setCurrentText(OUTPUT_LAYER)
    predict.run()
    qtbot.waitUntil(lambda: predict.worker is None, timeout=TRAIN_TIMEOUT_MS)
    assert "new image prediction" in viewer2.layers
    predict.output_combo.setCurrentText(OUTPUT_DISK)
    predict.out_row.setText(str(tmp_path / "elsewhere"))
    predict.run()
    qtbot.waitUntil(lambda: predict.worker is None, timeout=TRAIN_TIMEOUT_MS)
    assert (tmp_path / "elsewhere" / "new_image.tif").is_file()
    errors_before = len(shown["error"])
    assert errors_before == 1


def test_errors_say_the_reason_first_and_the_path_last(tmp_path):
    assert error_message(InputError("/very/long/folder/of/the/lab/server/round_1/last.pt: nothing to resume")) == \
        "nothing to resume: /very/long/folder/of/the/lab/server/round_1/last.pt"
    assert error_message(InputError("no labelled image: label one first")) == "no labelled image: label one first"
    folder = tmp_path / ("a_long_folder_of_the_lab_server_" * 3)  # a path inside the message: its name there,
    folder.mkdir()  # the whole path at the end
    image = folder / "img_001.tif"
    image.write_bytes(b"")
    assert error_message(InputError(f"{image} has unsupported pixel type int64; save it as uint8")) == \
        f"img_001.tif has unsupported pixel type int64; save it as uint8: {image}"
    assert error_message(InputError(f"cannot create a project in {folder}: the folder is not empty; choose an "
                                    "empty one.")) == \
        f"cannot create a project in {folder.name}: the folder is not empty; choose an empty one: {folder}"
    at_end = f"no image named 'a' in project {folder}"
    assert error_message(InputError(at_end)) == at_end  # already last
    spaced = f"{folder}/My Data/x.tif is a folder, not an image file"  # a path with spaces is left whole
    assert error_message(InputError(spaced)) == spaced
    assert error_message(InputError("see https://bioimage.io/spec for the format")) == \
        "see https://bioimage.io/spec for the format"


def test_loss_plot_draws_each_part_smoothed_with_marks_and_axis_titles(make_napari_viewer):
    make_napari_viewer()  # a QApplication
    from napari_diffseg._widgets._loss_plot import LossPlot

    rng = np.random.default_rng(0)
    points = [(step, "pretrain", {"reconstruction": 0.5 - 0.01 * step}) for step in range(1, 6)]
    for step in range(6, 80):
        weight = 0.0 if step < 20 else min(1.0, (step - 20) / 20)
        losses = {"mask_labelled": 0.3 + 0.1 * rng.standard_normal() ** 2, "mask_unlabelled": 1.0 + rng.random(),
                  "supervised": 5.0, "unsupervised": 5.0, "total": 0.3, "unlabelled_weight": weight}
        if step % 4 == 0:
            losses["rounds"] = 2.0
        points.append((step, "cotrain", losses))
    plot = LossPlot()
    plot.resize(320, 190)
    plot.set_points(points)
    image = plot.grab()  # paints
    assert not image.isNull()
    series = plot.update_series()
    assert set(series) == {"stage 1 (no labels)", "supervised", "unlabelled", "rounds"}
    assert plot.marks == {"co-training": 6.0, "unlabelled join": 21.0}
    raw = np.array([p[2]["mask_labelled"] for p in points if "mask_labelled" in p[2]])
    smoothed = np.asarray(series["supervised"].smoothed)
    assert smoothed[20:].std() < raw[20:].std() / 2  # smoothed
    assert series["rounds"].steps == [float(s) for s in range(8, 80, 4)]  # only the steps that ran rounds
    assert max(series["supervised"].smoothed) < 1  # the part apart, not the engine's sums (5.0 here)
    points.append((80, "cotrain", {"supervised": 0.2, "unlabelled_weight": 1.0}))  # grows incrementally
    plot.set_points(points)
    assert plot.update_series()["supervised"].steps[-1] == 80.0


def test_loss_plot_parts_come_from_a_real_run_of_the_train_panel(make_napari_viewer, qtbot, tmp_path, shown):
    """The plot's parts from the Progress events of real runs (the engine's loss keys, not the test's): the default
    method gives supervised, unlabelled and rounds (on the steps that ran rounds only) and the mark where the
    unlabelled images join; the supervised part is one network's Dice loss (at most 1), not the engine's sum over
    both networks and the rounds (which doubled at the join and jumped on every step with rounds). A Mean Teacher
    run gives its unlabelled part too."""
    viewer = make_napari_viewer()
    panels = open_panels(viewer)
    train, state = panels["Train"], panels["Train"].state
    _small_project(tmp_path / "proj")
    panels["Project"].open_project(tmp_path / "proj")
    state.config = tiny_config(max_steps=8, rounds_every=2)
    train.start_button.click()
    wait_until_finished(qtbot, state)
    assert state.status == Status.DONE, shown["error"]
    train._refresh_progress()
    series = train.plot.update_series()
    assert {"supervised", "unlabelled", "rounds"} <= set(series)
    joined = next(step for step, _, losses in state.losses if losses.get("unlabelled_weight", 0) > 0)
    assert train.plot.marks == {"unlabelled join": float(joined)}
    with_rounds = [float(step) for step, _, losses in state.losses if "rec" in losses]
    assert with_rounds and series["rounds"].steps == with_rounds
    assert series["unlabelled"].steps == [float(step) for step, _, _ in state.losses if step >= joined]
    assert max(step_losses["supervised"] for _, _, step_losses in state.losses) > 1  # the engine's sum ...
    assert len(series["supervised"].steps) == len(state.losses)
    assert all(0 <= value <= 1 for value in series["supervised"].smoothed)  # ... the plot's part: one network's

    state.config = tiny_config(max_steps=8, student="average", targets="average")  # Mean Teacher: one network
    train.start_button.click()
    wait_until_finished(qtbot, state)
    assert state.status == Status.DONE, shown["error"]
    series = train.plot.update_series()
    assert {"supervised", "unlabelled"} <= set(series) and "rounds" not in series
    assert series["unlabelled"].steps == [float(step) for step, _, losses in state.losses if "cps" in losses]
    assert series["unlabelled"].steps


def test_train_panel_explains_the_budget_the_plot_and_each_advanced_field(make_napari_viewer):
    viewer = make_napari_viewer()
    train = open_panels(viewer)["Train"]
    default = TrainConfig().schedule.budget_seconds
    assert f"default {format_duration(default, clock=True)}" in train.budget_help.text()
    assert train.plot_help.text() == PLOT_HELP and "warm-up" in PLOT_HELP
    for widget, key in ((train.rounds, "rounds"), (train.chained, "chained"), (train.width, "width"),
                        (train.patch, "patch"), (train.max_steps, "steps"), (train.seed, "seed"),
                        (train.device, "device")):
        assert widget.toolTip() == ADVANCED_HELP[key]


def test_view_fits_a_new_image_undo_only_when_it_can_act_and_review_restarts_at_the_top(
        make_napari_viewer, qtbot, tmp_path, shown):
    viewer = make_napari_viewer(show=True)
    panels = open_panels(viewer)
    review, annotate, state = panels["Review"], panels["Annotate"], panels["Review"].state
    project = _project_with_pseudo_labels(tmp_path / "proj")
    small = project.add_image(np.full((12, 16), 100, np.uint8), name="tiny").name
    state.set_project(project)

    annotate.open_image(project.names()[0])
    big_zoom = viewer.camera.zoom
    annotate.open_image(small)  # much smaller: the view fits it instead of keeping the old zoom
    assert viewer.camera.zoom > 2 * big_zoom

    queue = list(review.queue)
    review.show_image(queue[0])
    assert not review.undo_button.isEnabled()  # nothing decided yet
    review.accept()
    assert review.undo_button.isEnabled()
    project.next_round()  # as Next round does before training: the accept is ground truth of round 1 now
    state.refresh_round()
    assert not review.undo_button.isEnabled()

    review.show_image(queue[2])  # mid-run the user looks at another image ...
    state.set_status(Status.RUNNING)
    state.set_status(Status.DONE)  # ... the round ends: Review goes back to the most doubtful one
    qtbot.waitUntil(lambda: review.current_name() == review.queue[0], timeout=5_000)
    assert shown["error"] == []


def test_a_refused_or_failed_next_round_leaves_the_round_as_it_was(make_napari_viewer, qtbot, tmp_path, shown):
    """Next round begins the round only once training holds the project's lock: with another trainer holding it
    (the command line, say) the project stays in round 1 and no resume is noted; a run that fails before its first
    step (no labelled image) is taken back too."""
    viewer = make_napari_viewer()
    panels = open_panels(viewer)
    review, train, state = panels["Review"], panels["Train"], panels["Review"].state
    project = _small_project(tmp_path / "proj", labelled=0)
    state.set_project(project)
    state.config = tiny_config()

    with project.training_lock("training round 2 from the command line"):
        review.next_round_button.click()
        wait_until_finished(qtbot, state)
    assert state.status == Status.FAILED
    assert shown["error"][-1].startswith("project is busy: training round 2 from the command line")  # the reason
    assert shown["error"][-1].endswith(str(project.folder))  # first, the path last
    assert project.current_round == state.round == 1 and train.round_label.text() == "Round 1"
    assert project.config.get(_state.UNFINISHED_RUN_KEY) is None  # nothing to offer for resume
    assert not project.checkpoints_dir(2, create=False).exists()

    review.next_round_button.click()  # the lock is free: round 2 begins, then finds no labelled image
    wait_until_finished(qtbot, state)
    assert state.status == Status.FAILED and "no labelled image" in shown["error"][-1]
    assert project.current_round == state.round == 1 and train.round_label.text() == "Round 1"
    assert project.config.get(_state.UNFINISHED_RUN_KEY) is None
    assert not project.checkpoints_dir(2, create=False).exists()
    assert stopped_run(project) is None
