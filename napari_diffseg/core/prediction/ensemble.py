"""A model of layout "both" (core/method/ensemble.py trains it): a 2D network on slices of the volumes and a 3D
network, each predicting at its own working scale, with their probabilities averaged at full resolution (nnU-Net's
ensemble of its 2d and 3d_fullres configurations). It stands wherever a ``SegmentationModel`` does: its own
attributes (network, plan, working scale) are those of its 3D member, so block-by-block prediction plans its halo
for the 3D network, the larger context of the two."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from .model import Prediction, SegmentationModel
from .predict import TileProgress, normalised_entropy, probabilities_to_mask


class EnsembleModel(SegmentationModel):
    """Members of different layouts, one prediction: the mean of their probabilities, thresholded at the mean of
    their thresholds."""

    def __init__(self, members: list[SegmentationModel], card: dict):
        if len(members) < 2:
            raise ValueError("an ensemble needs two members or more")
        volume = next((member for member in members if member.slice_axis is None), members[-1])
        super().__init__(volume.network, float(np.mean([m.threshold for m in members])), card, volume.device,
                         volume.bf16, volume.working_scale, volume.backend, volume.plan)
        self.members = members

    def layout_note(self) -> str:
        return " (" + " and ".join(_member_words(m) for m in self.members) + ", probabilities averaged)"

    def describe_plan(self) -> str:
        return "plan: both, " + "; ".join(m.describe_plan().removeprefix("plan: ") for m in self.members)

    def iter_predict_normalised(self, image01: np.ndarray, uncertainty: bool = False, draws: int = 4,
                                sampling_steps: int = 1, tile: tuple[int, ...] | None = None,
                                mirror: bool | None = None) -> Generator[TileProgress, None, Prediction]:
        mirror = self.mirror if mirror is None else mirror
        mean = None  # the sum of the members' probabilities, in place (a block of a large volume holds one copy)
        for member in self.members:
            member_tile = tile if tile is not None and len(tile) == member.config.spatial_dims else None
            probabilities = (yield from member.iter_predict_normalised(image01, False, draws, sampling_steps,
                                                                       member_tile, mirror)).probabilities
            if mean is None:
                mean = np.asarray(probabilities, np.float32)
            else:
                np.add(mean, probabilities, out=mean)
            del probabilities
        mean /= len(self.members)
        # the uncertainty of an ensemble is the entropy of its mean probabilities (no diffusion draws: the members
        # are the ensemble), which grows where either member is unsure and where they disagree
        unc = normalised_entropy(mean) if uncertainty else None
        return Prediction(probabilities_to_mask(mean, self.threshold), mean, unc)


def _member_words(member: SegmentationModel) -> str:
    return ("a 3D network" if member.slice_axis is None
            else f"a 2D network on slices across axis {member.slice_axis}")
