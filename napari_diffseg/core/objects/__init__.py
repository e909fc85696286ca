"""Objects mode: instance masks (one id per object) trained as three classes and decoded back into objects.

``targets`` (instance ids -> background / interior / boundary), ``decode`` (class probabilities -> instance ids by
a seeded watershed), ``measure`` (the per-object table), ``metrics`` (matching at an IoU threshold, the StarDist /
DSB 2018 average precision). No torch; see docs/how-it-works.md, "Objects".
"""
