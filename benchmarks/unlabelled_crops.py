"""How much ground-truth foreground the unlabelled patches of the default sampler contain: the room that lever 8 of
the quality issue (sampling unlabelled patches that contain foreground) would act on. Uniform 128 x 128 corners, as
``PatchSampler.image_batch`` draws them, 20 per pool image (data_large, the images after the first 2) at the working
scale that ``scale.choose_working_scale`` picks from the first 2 masks. Reads ground truth the method never sees.

    python benchmarks/unlabelled_crops.py benchmarks/quality/screens/unlabelled_crops.json
"""
import json, sys
import numpy as np, tifffile
from pathlib import Path
from napari_diffseg.core.data.scale import choose_working_scale, resize_labels, scaled_shape
root = Path(__file__).resolve().parents[2] / 'shared' / 'data_large'
out = {}
for name in ('glas', 'ph2', 'dsb2018'):
    split = json.loads((root / name / 'split.json').read_text())
    ids = split['train']
    masks = [(tifffile.imread(root / name / 'masks' / f'{i}.tif') > 0).astype(np.uint8) for i in ids]
    scale = choose_working_scale(masks[:2])
    rng = np.random.default_rng(0)
    patch = 128
    any_fg, frac = [], []
    image_fg = []
    for m in masks[2:]:
        small = resize_labels(m, scaled_shape(m.shape, scale), 2) if scale != 1 else m
        small = np.pad(small, [(0, max(0, patch - s)) for s in small.shape], mode='reflect')
        image_fg.append(small.mean())
        for _ in range(20):
            y, x = (int(rng.integers(0, s - patch + 1)) for s in small.shape)
            crop = small[y:y + patch, x:x + patch]
            any_fg.append(crop.any()); frac.append(crop.mean())
    frac = np.array(frac)
    out[name] = dict(scale=scale, crops=len(frac), with_foreground=float(np.mean(any_fg)),
                     foreground_fraction_mean=float(frac.mean()), crops_under_5pct=float(np.mean(frac < 0.05)),
                     image_foreground_mean=float(np.mean(image_fg)))
    print(name, out[name], flush=True)
json.dump(out, open(sys.argv[1], 'w'), indent=1)
