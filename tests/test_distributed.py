"""Data-parallel training (core/method/distributed.py) with 2 CPU ranks over gloo, one thread each: averaged gradients equal
the gradient of the whole batch in one process; a training run keeps identical weights on both ranks, only rank 0
writes, and a resumed run continues; `torchrun ... diffseg train` runs end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
import socket
import subprocess
import sys

import numpy as np
import torch
import torch.multiprocessing as mp

from napari_diffseg.core.method import distributed, training
from napari_diffseg.core.data.training_set import training_data_from_arrays
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from napari_diffseg.core.method.teacher import DiffusionTwin, NetworkConfig, segmentation_loss
from conftest import tiny_train_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gradient_case() -> tuple[DiffusionTwin, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    network = DiffusionTwin(NetworkConfig(2, 1, 2, base_channels=4, depth=1)).eval()  # eval: BatchNorm per sample
    generator = torch.Generator().manual_seed(1)
    images = torch.rand((4, 1, 16, 16), generator=generator)
    labels = (torch.rand((4, 16, 16), generator=generator) > 0.5).long()
    return network, images, labels


def _gradients(network: DiffusionTwin) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in network.mask_path.parameters()])


def _data():
    pairs = make_blobs_dataset(6, shape=(48, 48), seed=2)
    return training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1], 1: pairs[1][1]},
                                     [f"img{i}" for i in range(6)])


def _rank(rank: int, port: int, folder: str) -> None:
    """One rank: the gradient check, then a 4-step run and its 3-step continuation; results as JSON files."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = distributed.Ranks(rank, WORLD)
    distributed.start(ranks, torch.device("cpu"))
    folder = Path(folder)
    try:
        network, images, labels = _gradient_case()
        shard = slice(2 * rank, 2 * rank + 2)
        segmentation_loss(network.mask_logits(images[shard]), labels[shard]).backward()
        distributed.average_gradients([network], WORLD)
        np.save(folder / f"gradients_{rank}.npy", _gradients(network).numpy())

        runs: list[training.TrainingRun] = []
        original_init = training.TrainingRun.__init__

        def recording_init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            runs.append(self)

        training.TrainingRun.__init__ = recording_init
        report = {}
        for resume, steps in ((False, 4), (True, 7)):
            config = tiny_train_config(max_steps=steps, seed=5, student="network")  # both networks data-parallel
            events = list(training.train(_data(), config, folder / "model", resume=resume, ranks=ranks))
            run = runs[-1]
            weights = torch.cat([p.detach().reshape(-1) for m in (run.teacher, run.student) for p in m.parameters()])
            gathered = [torch.zeros_like(weights) for _ in range(WORLD)]
            dist.all_gather(gathered, weights)
            report[f"steps_{steps}"] = {
                "step": run.step,
                "largest_difference": float((gathered[0] - gathered[1]).abs().max()),
                "events": sorted({type(event).__name__ for event in events}),
            }
        (folder / f"report_{rank}.json").write_text(json.dumps(report))
    finally:
        distributed.stop()


def test_two_ranks_average_gradients_keep_weights_identical_and_resume(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    network, images, labels = _gradient_case()
    segmentation_loss(network.mask_logits(images), labels).backward()  # the whole batch in one process
    whole = _gradients(network).numpy()
    for rank in range(WORLD):
        np.testing.assert_allclose(np.load(tmp_path / f"gradients_{rank}.npy"), whole, rtol=1e-4, atol=1e-6)

    reports = [json.loads((tmp_path / f"report_{rank}.json").read_text()) for rank in range(WORLD)]
    for steps in (4, 7):
        for report in reports:
            assert report[f"steps_{steps}"]["step"] == steps  # the resumed run continued from step 4
            assert report[f"steps_{steps}"]["largest_difference"] == 0.0  # identical weights on both ranks
        assert "Done" in reports[0][f"steps_{steps}"]["events"]
        assert "Done" not in reports[1][f"steps_{steps}"]["events"]  # rank 1 only trains
    assert (tmp_path / "model" / "best.pt").is_file() and (tmp_path / "model" / "last.pt").is_file()


def test_torchrun_diffseg_train_end_to_end(tmp_path):
    """The documented cluster recipe, on 2 CPU processes: torchrun starts both ranks of `diffseg train`."""
    import tifffile

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for index, (image, mask) in enumerate(make_blobs_dataset(5, shape=(48, 48), seed=3)):
        tifffile.imwrite(tmp_path / "images" / f"img{index}.tif", image)
        if index < 2:
            tifffile.imwrite(tmp_path / "labels" / f"img{index}.tif", mask)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
               str(_free_port()), "-m", "napari_diffseg.cli", "train", str(tmp_path / "images"), "--labels",
               str(tmp_path / "labels"), "--out", str(tmp_path / "model"), "--steps", "3", "--budget", "600",
               "--width", "8", "--patch-size", "32", "32", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-parallel training: 2 ranks (gloo)" in result.stderr
    assert (tmp_path / "model" / "best.pt").is_file()
    assert json.loads((tmp_path / "model" / "model_card.json").read_text())["training"]["steps"] == 3
