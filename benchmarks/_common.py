"""Helpers shared by the benchmark scripts: dataset splits, training and scoring through the engine the `diffseg`
CLI uses, prediction timing, and a description of the machine.

Training goes through ``core.data.training_set.training_data_from_arrays`` + ``core.method.training.train`` and prediction through
``core.prediction.model.SegmentationModel`` (what ``diffseg train`` / ``diffseg predict`` call); scores through
``core.data.metrics``. Nothing here imports torch at module level, so a parent process can import this module and
fork workers that each set their own torch thread count.
"""

from __future__ import annotations

from collections.abc import Callable
import datetime
import importlib.metadata
import json
import math
import os
from pathlib import Path
import platform
import subprocess
import tempfile
import time

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

Pair = tuple[np.ndarray, np.ndarray, str]  # (raw image, ground-truth mask, name)
RF_PIXELS_PER_IMAGE = 20000  # half foreground, half background (fewer when an image has fewer)
RF_MAX_PIXELS = 40000  # in total over the labelled images, so one fit stays under ~30 s on one core
RF_TREES = 50


def load_split(root: Path) -> tuple[list[Pair], list[Pair]]:
    """(train, test) pairs of a dataset folder with images/, masks/ and split.json (train in labelling order)."""
    from napari_diffseg.core.data.io import read_image, read_mask

    root = Path(root)
    split = json.loads((root / "split.json").read_text())

    def pairs(ids: list[str]) -> list[Pair]:
        return [(read_image(root / "images" / f"{i}.tif"), read_mask(root / "masks" / f"{i}.tif"), i) for i in ids]

    return pairs(split["train"]), pairs(split["test"])


def train_model(train_pairs: list[Pair], labelled: list[int], config, out_dir: Path,
                warm_start: Path | None = None, on_event: Callable[[object], None] | None = None) -> dict:
    """Train on every image of ``train_pairs`` with the ground truth of the ``labelled`` indices (the others are
    the unlabelled pool), as ``diffseg train`` does; ``on_event`` sees every training event. Returns steps,
    seconds, the latest mean uncertainty of each unlabelled image (from the last ``PseudoLabelsReady``) and the
    run's collapse verdict (``FitReport.collapse``: None, "empty" or "all foreground")."""
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.device import configure_threads
    from napari_diffseg.core.method.training import Done, Progress, PseudoLabelsReady, train

    configure_threads(config.runtime.threads)  # as the CLI does: the engine leaves the process's thread count alone

    data = training_data_from_arrays([p[0] for p in train_pairs], {i: train_pairs[i][1] for i in labelled},
                                     [p[2] for p in train_pairs])
    steps, uncertainty, collapse = 0, {}, None
    start = time.perf_counter()
    for event in train(data, config, Path(out_dir), warm_start=warm_start):
        if on_event is not None:
            on_event(event)
        if isinstance(event, Progress):
            steps = event.step
        elif isinstance(event, PseudoLabelsReady):
            uncertainty = dict(event.mean_uncertainty)
        elif isinstance(event, Done) and event.fit is not None:
            collapse = event.fit.collapse
    return {"steps": steps, "train_seconds": time.perf_counter() - start, "mean_uncertainty": uncertainty,
            "collapse": collapse}


def score_masks(predictions: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """Per-image Dice and HD95 (pixels), their means (HD95 over images where both masks are non-empty) and the
    Dice pooled over all pixels."""
    from napari_diffseg.core.data.metrics import dice, hd95

    dices = [dice(p, t) for p, t in zip(predictions, truth)]
    distances = [hd95(p, t) for p, t in zip(predictions, truth)]
    finite = [d for d in distances if not math.isnan(d)]
    pooled = dice(np.concatenate([p.ravel() for p in predictions]), np.concatenate([t.ravel() for t in truth]))
    return {"dice": dices, "hd95": distances, "mean_dice": float(np.mean(dices)), "pooled_dice": pooled,
            "mean_hd95": float(np.mean(finite)) if finite else math.nan,
            "hd95_undefined": len(distances) - len(finite)}


def score_model(model_dir: Path, test_pairs: list[Pair], sampling_steps: int = 1, bf16: bool | None = None) -> dict:
    """Predict the test images with the model folder's best.pt (bf16 as ``diffseg predict`` decides it unless
    given) and score them; also the prediction time per image."""
    from napari_diffseg.core import device as devices
    from napari_diffseg.core.prediction.model import SegmentationModel

    bf16 = devices.bf16_supported("cpu") if bf16 is None else bf16
    model = SegmentationModel.load(Path(model_dir), bf16=bf16)
    start = time.perf_counter()
    predictions = [model.predict(image, sampling_steps=sampling_steps).mask for image, _, _ in test_pairs]
    seconds = time.perf_counter() - start
    result = score_masks(predictions, [mask for _, mask, _ in test_pairs])
    result.update(threshold=model.threshold, twin=model.card.get("selected_twin"),
                  predict_seconds_per_image=seconds / len(test_pairs))
    return result


def train_and_score(root: str, n_labelled: int, labels_only: bool, budget: float, seed: int, extra: dict,
                    sampling_steps: tuple[int, ...] = (1,), keep_dir: str | None = None) -> dict:
    """Train on the dataset's train split with its first ``n_labelled`` images labelled and score on its test
    split (one torch thread). ``sampling_steps``: score the same model with each number of sampling steps (the
    first is the headline result). ``keep_dir``: train there and keep the model folder (else a temporary one)."""
    import torch
    from napari_diffseg.core.method.training import TrainConfig

    train_pairs, test_pairs = load_split(Path(root))
    config = TrainConfig(budget_seconds=budget, labels_only=labels_only, seed=seed, threads=1, **extra)

    def run(out: Path) -> dict:
        trained = train_model(train_pairs, list(range(n_labelled)), config, out)
        scores = {steps: score_model(out, test_pairs, sampling_steps=steps) for steps in sampling_steps}
        result = {**scores[sampling_steps[0]], **trained, "threads": torch.get_num_threads()}
        result["sampling"] = {str(steps): {k: scores[steps][k] for k in
                                           ("mean_dice", "mean_hd95", "predict_seconds_per_image")}
                              for steps in sampling_steps}
        return result

    if keep_dir is not None:
        Path(keep_dir).mkdir(parents=True, exist_ok=True)
        return run(Path(keep_dir))
    with tempfile.TemporaryDirectory() as out:
        return run(Path(out))


def mosaic(images: list[np.ndarray], size: int) -> np.ndarray:
    """A size x size grey image tiled from 2D grey ``images`` (to time prediction on a large image)."""
    reps = -(-size // images[0].shape[0])
    return np.block([[images[(r * reps + c) % len(images)] for c in range(reps)] for r in range(reps)])[:size, :size]


def time_prediction(model_dir: Path, image: np.ndarray, bf16: bool, repeats: int = 1,
                    tile: tuple[int, ...] | None = None) -> dict:
    """Seconds and megapixels per second of single-step prediction of ``image`` (after a warm-up on a crop)."""
    from napari_diffseg.core.prediction.model import SegmentationModel

    model = SegmentationModel.load(Path(model_dir), bf16=bf16)
    model.predict(image[:256, :256], tile=tile)  # warm-up (oneDNN kernel selection)
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict(image, tile=tile)
    seconds = (time.perf_counter() - start) / repeats
    return {"seconds": seconds, "mp_per_s": image.size / 1e6 / seconds}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def machine() -> str:
    """One line: CPU, cores, Python and torch versions, date (imports torch: call it where torch is fine)."""
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def versions(packages: tuple[str, ...] = ("napari-diffseg", "torch", "numpy", "scipy", "scikit-image",
                                          "scikit-learn", "matplotlib")) -> dict[str, str]:
    """Installed versions (without importing the packages) plus Python and the git commit of the checkout."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        found["git"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        found["git"] = "unknown"
    return found


def print_report(lines: list[str], out: str | None) -> None:
    """Print a benchmark's markdown lines and, with ``out``, also write them to that file."""
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (what ``uptime`` shows)."""
    return os.getloadavg()


# ------------------------------------------------------------------------------------------ random forest
def rf_features(image: np.ndarray) -> np.ndarray:
    """ilastik-like pixel features: intensity, edges and texture at several scales, per channel ((*spatial, F))."""
    from skimage.feature import multiscale_basic_features
    from napari_diffseg.core.data.io import to_channels_first

    channels_last = np.moveaxis(to_channels_first(image), 0, -1)
    features = multiscale_basic_features(channels_last, intensity=True, edges=True, texture=True, channel_axis=-1)
    return features.astype(np.float32)  # what scikit-learn's trees use: half the memory of float64


def fit_balanced_forest(labelled: list[tuple[np.ndarray, np.ndarray]], per_class: int, seed: int):
    """A random forest on up to ``per_class`` foreground and as many background pixels of each labelled image
    ((features (pixels, F), truth (pixels,) bool) pairs), drawn with ``seed``."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    features, targets = [], []
    for flat, truth in labelled:
        for value in (True, False):
            where = np.flatnonzero(truth == value)
            take = rng.choice(where, min(per_class, len(where)), replace=False)
            features.append(flat[take])
            targets.append(truth[take])
    forest = RandomForestClassifier(n_estimators=RF_TREES, n_jobs=1, random_state=seed)
    return forest.fit(np.concatenate(features), np.concatenate(targets))


def random_forest_scores(root: Path, n: int, seeds: tuple[int, ...] | list[int]) -> dict:
    """Random forests on the labelled images' pixels (a balanced subsample drawn per seed), each predicted on
    every test pixel; the features of the images are computed once for all seeds."""

    train_pairs, test_pairs = load_split(Path(root))
    per_class = min(RF_PIXELS_PER_IMAGE, RF_MAX_PIXELS // n) // 2
    began = time.perf_counter()
    labelled = [(rf_features(image).reshape(mask.size, -1), mask.ravel() > 0) for image, mask, _ in train_pairs[:n]]
    test = [rf_features(image).reshape(mask.size, -1) for image, mask, _ in test_pairs]
    feature_seconds = time.perf_counter() - began
    per_seed = []
    for seed in seeds:
        start = time.perf_counter()
        forest = fit_balanced_forest(labelled, per_class, seed)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        foreground = list(forest.classes_).index(True) if True in forest.classes_ else None
        predictions = []
        for flat, (_, mask, _) in zip(test, test_pairs):
            if foreground is None:
                predictions.append(np.zeros(mask.shape, bool))
            else:
                predictions.append(forest.predict_proba(flat)[:, foreground].reshape(mask.shape) > 0.5)
        result = score_masks(predictions, [mask for _, mask, _ in test_pairs])
        result.update(seed=seed, fit_seconds=fit_seconds, pixels=sum(min(per_class, int(t.sum())) + min(per_class, int((~t).sum()))
                                                                 for _, t in labelled),
                      predict_seconds_per_image=(time.perf_counter() - start) / len(test_pairs))
        per_seed.append(result)
    return {"seed_results": per_seed, "feature_seconds": feature_seconds}
