"""One set of bounds for the training settings: TrainConfig.validate, the CLI's option types and the Train panel's
spin boxes all take them from core.method.config.LIMITS; these tests fail when one of the three drifts."""

from __future__ import annotations

import argparse
import logging

import pytest

from napari_diffseg import cli
from napari_diffseg._state import DiffsegState
from napari_diffseg._widgets.train import TrainPanel
from napari_diffseg.core.method.config import LIMITS, TrainConfig
from napari_diffseg.core.errors import InputError

# CLI option of `diffseg train` -> the setting it sets (patch_edge: each number of --patch-size)
CLI_OPTIONS = {"--steps": "max_steps", "--rounds": "rounds", "--rounds-every": "rounds_every",
               "--width": "base_channels", "--patch-size": "patch_edge", "--batch-size": "batch_size",
               "--threads": "threads", "--seed": "seed", "--num-classes": "num_classes"}
# Train panel spin box -> setting; (minimum shown, special value 0 meaning "default") where 0 is not a value
PANEL_BOXES = {"rounds": "rounds", "width": "base_channels", "seed": "seed", "patch": "patch_edge"}
SPECIAL_ZERO = {"patch"}  # 0 = auto


def _train_option(option: str) -> argparse.Action:
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in subcommands.choices["train"]._actions if option in a.option_strings)


def _config_with(setting: str, value):
    if setting == "patch_edge":
        return TrainConfig(patch_size=(value, value))
    return TrainConfig(**{setting: value})


@pytest.mark.parametrize("option", sorted(CLI_OPTIONS))
def test_cli_options_take_their_bounds_from_the_config(option):
    setting, parse = CLI_OPTIONS[option], _train_option(option).type
    bounds = LIMITS[setting]
    low = int(bounds.minimum)
    assert parse(str(low)) == low
    _config_with(setting, low)  # the CLI's smallest value is a valid setting
    with pytest.raises(argparse.ArgumentTypeError):
        parse(str(low - 1))
    with pytest.raises(InputError):
        _config_with(setting, low - 1)
    if bounds.maximum is not None:
        high = int(bounds.maximum)
        assert parse(str(high)) == high
        _config_with(setting, high)
        with pytest.raises(argparse.ArgumentTypeError):
            parse(str(high + 1))
        with pytest.raises(InputError):
            _config_with(setting, high + 1)


def test_train_panel_spin_boxes_take_their_bounds_from_the_config(qtbot):
    panel = TrainPanel(None, DiffsegState())
    qtbot.addWidget(panel)
    for box_name, setting in PANEL_BOXES.items():
        box, bounds = getattr(panel, box_name), LIMITS[setting]
        expected_min = 0 if box_name in SPECIAL_ZERO else int(bounds.minimum)
        expected_max = int(bounds.maximum) if bounds.maximum is not None else 2**31 - 1
        assert (box.minimum(), box.maximum()) == (expected_min, expected_max), box_name


@pytest.mark.parametrize(("changes", "message"), [
    ({"batch_size": 0}, "batch_size must be a number >= 1"),
    ({"base_channels": 2}, "network width must be a number in"),
    ({"depth": 9}, "depth must be a number in"),
    ({"lr_cotrain": 0.0}, "lr_cotrain must be a number in"),
    ({"uncertainty_draws": -1}, "uncertainty_draws must be a number in"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda, cuda:N or mps"),
    ({"patch_size": (16, 16), "depth": 5}, "smaller than the network's 32-pixel granularity"),
    ({"patch_size": (64,)}, r"patch_size needs 2 \(Y X\) or 3 \(Z Y X\) numbers"),
    ({"seed": -1}, "seed must be a number in"),
    ({"threads": 0}, "threads must be a number >= 1"),
    ({"layout": "both", "patch_size": (32, 32)}, "plans a patch for each of its two networks"),
    ({"layout": "3d", "patch_size": (32, 32)}, "the patch size needs as many numbers"),
    ({"layout": "slices"}, "layout must be one of auto, 2d, 3d, both"),
])
def test_every_setting_is_checked(changes, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**changes)


def test_the_layout_option_offers_the_config_layouts():
    from napari_diffseg.core.method.config import Layout

    assert _train_option("--layout").choices == [layout.value for layout in Layout]
    args = cli.build_parser().parse_args(["train", "images", "--labels", "labels", "--out", "m", "--layout", "2d",
                                          "--patch-size", "96", "64"])
    from napari_diffseg.cli._common import _train_config

    config = _train_config(args, 2)
    assert config.network.layout == Layout.SLICES and config.schedule.patch_size == (96, 64)


def test_stored_settings_with_unknown_keys_are_named_not_dropped_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="napari_diffseg.core.method.config"):
        config = TrainConfig.from_dict({"rounds": 2, "teacher_momentum": 0.99})
    assert config.method.rounds == 2
    assert "ignoring unknown training settings: teacher_momentum" in caplog.text


def test_settings_live_in_four_sections_and_are_set_by_name():
    from napari_diffseg.core.method.config import SECTION_OF, NetworkSettings, Twin

    config = TrainConfig(network=NetworkSettings(base_channels=8), seed=3, keep_twin="student")
    assert config.network.base_channels == 8 and config.runtime.seed == 3
    assert config.method.keep_twin is Twin.STUDENT  # a choice becomes its enum member
    assert set(SECTION_OF.values()) == {"method", "network", "schedule", "runtime"}
    changed = config.replace(depth=2, budget_seconds=None, max_steps=5)
    assert (changed.network.depth, changed.network.base_channels, changed.schedule.max_steps) == (2, 8, 5)
    assert config.network.depth == 3 and changed.network is not config.network  # copies, never shared sections
    with pytest.raises(InputError, match="give a time budget"):
        config.replace(budget_seconds=None)  # a copy is validated like a new config
    with pytest.raises(TypeError, match="unknown training settings: widht"):
        TrainConfig(widht=8)


def test_settings_are_stored_flat_by_name_and_read_back_flat_or_nested():
    config = TrainConfig(base_channels=8, patch_size=[32, 32], lr_schedule="constant", seed=4)
    stored = config.to_dict()
    assert stored["base_channels"] == 8 and stored["patch_size"] == (32, 32)
    assert type(stored["lr_schedule"]) is str and stored["lr_schedule"] == "constant"  # plain JSON values
    assert TrainConfig.from_dict(stored) == config
    nested = {"network": {"base_channels": 8}, "schedule": {"patch_size": [32, 32], "lr_schedule": "constant"},
              "runtime": {"seed": 4}}
    assert TrainConfig.from_dict(nested) == config


def test_stored_settings_merge_under_the_given_ones_or_are_ignored_whole(caplog):
    stored = {"base_channels": 8, "rounds": 2, "seed": 9, "patch_size": [32, 32]}
    with caplog.at_level(logging.INFO, logger="napari_diffseg.core.method.config"):
        config = TrainConfig.from_stored(stored, exclude=frozenset({"seed"}), rounds=3)
    assert (config.network.base_channels, config.method.rounds, config.runtime.seed) == (8, 3, 0)
    assert config.schedule.patch_size == (32, 32)
    assert "kept from the project's stored settings: base_channels 8, patch_size (32, 32)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_diffseg.core.method.config"):
        config = TrainConfig.from_stored({**stored, "depth": 99}, rounds=3)  # edited by hand: out of bounds
    assert config == TrainConfig(rounds=3)  # none of the stored settings, not half of them
    assert "ignoring the project's stored training settings (depth must be a number in [1, 6]" in caplog.text
