"""Out-of-core prediction on a dask.distributed cluster (``diffseg predict --dask-scheduler ADDRESS``): the blocks of
core/prediction/large.py become tasks; each worker process loads the model once (lazily, on its first block), reads its
block's input with halo from the image file and writes the block's core into the shared zarr output. The input
file, the model folder and the output must be on a file system every worker sees. The completion mark is written
by the client after the last block. Needs the ``distributed`` package (extra ``[cluster]``).
"""

from __future__ import annotations

from collections.abc import Generator
import functools
from pathlib import Path

from ..errors import InputError
from .large import BlockProgress, create_output, mark_complete, open_lazy, plan_blocks, predict_block
from .model import SegmentationModel


@functools.lru_cache(maxsize=2)
def _worker_model(model_dir: str, bf16: bool | None) -> SegmentationModel:
    """The model of ``model_dir`` in this worker process, loaded by its first block; ``bf16`` None: where the
    worker's device has it natively."""
    from .. import device as devices

    device = devices.select_device("auto")
    return SegmentationModel.load(Path(model_dir), device=device,
                                  bf16=devices.bf16_supported(device) if bf16 is None else bf16)


def _block_task(model_dir: str, source: str, out_path: str, plan, corner: tuple[int, ...], name: str,
                tile: tuple[int, ...] | None, bf16: bool | None, level: int = 0) -> tuple[slice, ...]:
    import zarr

    model = _worker_model(model_dir, bf16)
    return predict_block(model, open_lazy(Path(source), level), zarr.open_array(out_path, mode="r+"), plan, corner,
                         name, tile)


def predict_large_on_cluster(model_dir: Path, source: Path, out_path: Path, scheduler: str,
                             tile: tuple[int, ...] | None = None, bf16: bool | None = None, level: int = 0,
                             ) -> Generator[BlockProgress, None, Path]:
    """Predict ``source`` block by block on the dask cluster at ``scheduler`` (an address such as
    tcp://host:8786, or a ``distributed.Client``); yields progress as blocks finish. Closing the generator cancels
    the blocks not yet run and leaves the output without the completion mark. ``bf16``: the workers' precision
    (None: bf16 where their device has it natively); ``level``: the resolution level of an OME-Zarr input."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise InputError("--dask-scheduler needs the 'distributed' package: pip install 'napari-diffseg[cluster]'") \
            from None
    local_model = SegmentationModel.load(Path(model_dir))  # validates the model and plans with its layout
    plan = plan_blocks(local_model, open_lazy(Path(source), level), Path(source).name)
    out = create_output(out_path, plan)
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    futures = [client.submit(_block_task, str(model_dir), str(source), str(out_path), plan, corner,
                             Path(source).name, tile, bf16, level, pure=False) for corner in plan.corners()]
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            region = future.result()  # re-raises a block's error here
            yield BlockProgress(done, len(futures), region)
    finally:
        client.cancel(futures)
        if client is not scheduler:
            client.close()
    mark_complete(out, local_model, Path(source).name)
    return Path(out_path)
