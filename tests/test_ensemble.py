"""Layout "both" (core/method/ensemble.py, core/prediction/model.EnsembleModel): a 2D network on slices and a 3D network
trained one after the other in one budget, joined into one model whose probabilities are the mean of theirs."""

from __future__ import annotations

import contextlib
import csv
import json

import numpy as np
import pytest
import tifffile

from napari_diffseg.core.data.synthetic import make_blobs_dataset
from napari_diffseg.core.data.training_set import training_data_from_arrays
from napari_diffseg.core.errors import InputError, ModelError
from napari_diffseg.core.method import ensemble
from napari_diffseg.core.method.checkpoint import BEST, CARD, LAST, ModelCheckpoint, RunCheckpoint
from napari_diffseg.core.method.config import TrainConfig
from napari_diffseg.core.method.events import CheckpointSaved, Done, PlanChosen, Progress, PseudoLabelsReady
from napari_diffseg.core.method.training import train
from napari_diffseg.core.prediction.model import EnsembleModel
from napari_diffseg.core.prediction.model import SegmentationModel
from conftest import tiny_train_config


def _volumes(count=3, shape=(16, 32, 32)):
    pairs = make_blobs_dataset(count, shape, ndim=3, seed=6)
    return training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1]}, [f"v{i}" for i in range(count)])


def _config(**changes):
    return tiny_train_config(**{"max_steps": 4, "patch_size": None, "batch_size": None, "layout": "both", **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("both")
    data = _volumes()
    events = list(train(data, _config(), out))
    return data, out, events


def test_both_trains_a_2d_then_a_3d_member_with_progress_over_the_whole_budget(trained):
    data, out, events = trained
    plans = [e for e in events if isinstance(e, PlanChosen)]
    assert [p.plan["layout"] for p in plans] == ["2d", "3d"]
    assert plans[0].text.startswith("member 1 of 2 of layout both (50% of the budget)")
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == [1, 2, 3, 4]  # the 3D member's steps count on from the 2D member's
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions) and fractions[1] == pytest.approx(0.5) and fractions[-1] == pytest.approx(1)
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1 and events[-1] is done[0] and done[0].model_dir == out
    assert set(done[0].fit.dice) == {"2d", "3d", "both"} and done[0].fit.kept_twin == "both"
    for layout in ("2d", "3d"):  # each member is a model folder of its own
        card = json.loads((out / "members" / layout / CARD).read_text())
        assert card["plan"]["layout"] == layout and card["training"]["steps"] == 2
    saved = ModelCheckpoint.load(out / BEST)
    assert [m["plan"]["layout"] for m in saved.members] == ["2d", "3d"]
    card = json.loads((out / CARD).read_text())
    assert card["plan"]["layout"] == "both" and set(card["plan"]["members"]) == {"2d", "3d"}
    assert card["training"]["steps"] == 4 and card["metrics"]["selected_twin"] == "both"
    members = card["training"]["members"]  # the keys of a one-network run's card, summed over the members
    assert set(card["training"]) >= {"stage", "elapsed_seconds", "overhead_seconds"}
    assert card["training"]["overhead_seconds"] == pytest.approx(
        members["2d"]["overhead_seconds"] + members["3d"]["overhead_seconds"], abs=2e-3)
    assert json.loads((out / ensemble.STATE_FILE).read_text())["finished"] == ["2d", "3d"]
    assert RunCheckpoint.load(out / LAST).plan["layout"] == "3d"  # the folder's last.pt: the 3D member's
    with (out / "losses.csv").open() as handle:  # the members' step logs, steps counted on
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["member"]) for row in rows] == [("1", "2d"), ("2", "2d"), ("3", "3d"), ("4", "3d")]
    fits = [e.fit.step for e in events if isinstance(e, CheckpointSaved) and e.fit is not None]
    assert fits == [2, 4, 4]  # each member's model, then the joined one
    ready = [e for e in events if isinstance(e, PseudoLabelsReady)]
    # each member's early pass (first_pseudo_labels_after_seconds=0), no member's final pass, the joined model's
    assert [e.step for e in ready] == [1, 3, 4]
    assert ready[-1].directory == out / "pseudo_labels" and ready[-1].names == ["v1", "v2"]
    pseudo = tifffile.imread(out / "pseudo_labels" / "v1.tif")
    assert pseudo.shape == data.images[1].shape[1:]


def test_the_joined_model_averages_its_members_probabilities(trained):
    _, out, _ = trained
    model = SegmentationModel.load(out)
    assert isinstance(model, EnsembleModel) and model.image_dims == 3 and model.slice_axis is None
    assert "probabilities averaged" in model.layout_note() and model.describe_plan().startswith("plan: both, 2d")
    members = [SegmentationModel.load(out / "members" / layout) for layout in ("2d", "3d")]
    raw = make_blobs_dataset(1, (12, 28, 36), ndim=3, seed=8)[0][0]
    member_probabilities = [m.predict(raw).probabilities for m in members]
    assert not np.allclose(*member_probabilities, atol=1e-3)  # two different networks
    prediction = model.predict(raw, uncertainty=True)
    expected = np.mean(member_probabilities, axis=0)
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(prediction.mask, (1 - expected[0] > model.threshold).astype(np.uint8))
    assert prediction.uncertainty.shape == raw.shape


def test_a_stopped_both_run_resumes_with_the_member_that_had_not_finished(tmp_path):
    data = _volumes()
    events = train(data, _config(), tmp_path)
    with contextlib.closing(events):
        for event in events:
            if isinstance(event, PlanChosen) and event.plan["layout"] == "3d":
                break  # stopped as the 3D member starts
    first = tmp_path / "members" / "2d" / BEST
    stamp = first.stat().st_mtime_ns
    assert json.loads((tmp_path / ensemble.STATE_FILE).read_text())["finished"] == ["2d"]
    assert (tmp_path / LAST).is_file()  # resumable, as every stopped run's folder
    resumed = list(train(data, _config(), tmp_path, resume=True))
    assert [e.plan["layout"] for e in resumed if isinstance(e, PlanChosen)] == ["3d"]
    assert [e.step for e in resumed if isinstance(e, Progress)] == [3, 4]
    assert first.stat().st_mtime_ns == stamp  # the finished 2D member was not trained again
    assert isinstance(SegmentationModel.load(tmp_path), EnsembleModel)


def test_project_rounds_of_layout_both_warm_start_member_by_member(tmp_path):
    from napari_diffseg.core.project import rounds
    from napari_diffseg.core.project.store import Project

    data = _volumes()
    project = Project.create(tmp_path / "proj")
    for name, image in zip(data.names, make_blobs_dataset(3, (16, 32, 32), ndim=3, seed=6)):
        project.add_image(image[0], name=name)
    project.save_label("v0", make_blobs_dataset(3, (16, 32, 32), ndim=3, seed=6)[0][1])
    config = _config(threads=1)
    first = list(rounds.train_round(project, config))
    assert isinstance(SegmentationModel.load(project.checkpoints_dir(1)), EnsembleModel)
    assert all(project.pseudo(name, 1)[0].shape == (16, 32, 32) for name in ("v1", "v2"))
    assert first[0].warm_start is None
    project.next_round()
    second = list(rounds.train_round(project, config))
    assert second[0].warm_start == project.checkpoints_dir(1), second[0].note
    assert ensemble._member_warm_start(project.checkpoints_dir(1), "3d") == \
        project.checkpoints_dir(1) / "members" / "3d"


def test_both_is_refused_where_it_cannot_train_in_one_line(tmp_path):
    with pytest.raises(InputError, match="plans a patch for each"):
        TrainConfig(layout="both", patch_size=(32, 32))
    pairs = make_blobs_dataset(2, (32, 32), seed=1)
    images = training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1]}, ["a", "b"])
    with pytest.raises(InputError, match="needs volumes"):
        list(train(images, _config(), tmp_path))
    with pytest.raises(ModelError, match="nothing to resume"):
        list(train(_volumes(), _config(), tmp_path / "empty", resume=True))


def test_exporting_a_both_model_names_the_members_to_export(trained, tmp_path):
    from napari_diffseg.core.prediction.bioimageio_export import ExportError, export_bioimageio

    _, out, _ = trained
    with pytest.raises(ExportError, match="layout 'both'.*members"):
        export_bioimageio(out, tmp_path / "model.zip")


def test_the_train_panel_offers_the_layouts(qtbot):
    from napari_diffseg._state import DiffsegState
    from napari_diffseg._widgets.train import TrainPanel

    state = DiffsegState()
    panel = TrainPanel(None, state)
    qtbot.addWidget(panel)
    assert [panel.layout_choice.itemText(i) for i in range(panel.layout_choice.count())] == ["auto", "2d", "3d",
                                                                                             "both"]
    panel.layout_choice.setCurrentText("both")
    assert state.config.network.layout == "both"


def test_a_member_whose_share_of_the_budget_ends_before_a_step_fails_the_run(tmp_path, monkeypatch):
    from napari_diffseg.core.errors import UntrainedRunError

    monkeypatch.setattr(ensemble, "SHARE_2D", 1 - 1e-9)  # a few nanoseconds left for the 3D member
    with pytest.raises(UntrainedRunError, match="before the first training step"):
        list(train(_volumes(), _config(max_steps=None, budget_seconds=5.0), tmp_path))
    assert not (tmp_path / BEST).exists()  # no model that is half untrained


def test_a_both_run_that_ends_untrained_leaves_the_earlier_model_folder_as_it_was(tmp_path, monkeypatch):
    from napari_diffseg.core.errors import UntrainedRunError
    from napari_diffseg.core.method import rollback

    data = _volumes()
    list(train(data, _config(), tmp_path))

    def state():
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = state()
    monkeypatch.setattr(ensemble, "SHARE_2D", 1 - 1e-9)  # the 2D member retrains, the 3D member cannot step
    with pytest.raises(UntrainedRunError):
        with rollback.restored_if_untrained(tmp_path):
            list(train(data, _config(max_steps=None, budget_seconds=3.0), tmp_path))
    assert state() == before  # the members' folders and the record of which finished included
