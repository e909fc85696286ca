"""The napari layers the panels work in: one image + labels pair for annotating, one image + pseudo-label +
uncertainty set for reviewing, each showing one project image at a time; and restoring them on reopen.

Layers are found by their fixed names and tagged with the project image they show (``metadata["diffseg_image"]``),
so panels opened later adopt the layers that are already there. Which image each set shows is remembered in the
project configuration (key ``"gui"``), so reopening a project brings the same layers back, with the data as saved
in the project (unsaved paint strokes are not kept). Call only from the GUI thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from napari_diffseg.core.errors import DiffsegError
from napari_diffseg.core.data.io import image_layout
from napari_diffseg.core.project.store import Project

log = logging.getLogger(__name__)

ANNOTATE_IMAGE = "DiffSeg image"
ANNOTATE_LABELS = "DiffSeg labels"
REVIEW_IMAGE = "DiffSeg review image"
REVIEW_PSEUDO = "DiffSeg pseudo-label"
REVIEW_UNCERTAINTY = "DiffSeg uncertainty"
ANNOTATE_LAYERS = (ANNOTATE_IMAGE, ANNOTATE_LABELS)
REVIEW_LAYERS = (REVIEW_IMAGE, REVIEW_PSEUDO, REVIEW_UNCERTAINTY)
PREDICT_IMAGE = "DiffSeg predicted image"
PREDICT_MASK = "DiffSeg prediction"
PREDICT_UNCERTAINTY = "DiffSeg prediction uncertainty"
PREDICT_LAYERS = (PREDICT_IMAGE, PREDICT_MASK, PREDICT_UNCERTAINTY)
NAME_KEY = "diffseg_image"
GUI_KEY = "gui"


_warm_up_started = threading.Event()


def warm_up_layer_machinery() -> None:
    """Pay napari's one-time costs of the first image and labels layers in a background thread, once per process:
    the imports of scipy.ndimage, pandas and vispy's polygon overlay, and pint's unit registry (parsing its
    definitions). On the GUI thread they froze the first Review or Annotate click for 1-1.5 s on 2 cores
    (benchmarks/bench_layer_cost.py). Panels that create layers call this when they are built."""
    if _warm_up_started.is_set():
        return
    _warm_up_started.set()
    threading.Thread(target=_warm_up, name="diffseg-layer-warm-up", daemon=True).start()


def _warm_up() -> None:
    try:
        import pandas  # noqa: F401 (napari's labels layer features)
        import scipy.ndimage  # noqa: F401 (napari's thumbnails and contrast limits)
        import scipy.linalg  # noqa: F401
        import skimage.color.colorconv  # noqa: F401 (napari's labels colours; skimage.color alone is lazy)
        import skimage.exposure  # noqa: F401
        import vispy.visuals.polygon  # noqa: F401 (napari's labels polygon overlay)

        _install_unit_registry()
    except Exception:  # a warm-up only: napari pays the cost itself if anything here fails
        log.debug("layer warm-up failed", exc_info=True)


def _install_unit_registry() -> None:
    """Build pint's application registry here instead of lazily inside napari's first ``add_*`` call. The new
    registry is parsed privately and installed only while the application registry is still the untouched lazy
    one (napari creates layers on the GUI thread; once a layer exists it has initialised the registry itself, and
    units of two registries must not meet)."""
    import pint
    from pint.registry import LazyRegistry

    application = pint.get_application_registry()
    if type(application.get()) is not LazyRegistry:
        return
    ready = pint.UnitRegistry(on_redefinition="raise")  # what LazyRegistry builds on first use
    if type(application.get()) is LazyRegistry:
        application.set(ready)


def find_layer(viewer: Any, layer_name: str) -> Any | None:
    return viewer.layers[layer_name] if layer_name in viewer.layers else None


def shown_image(viewer: Any, layer_name: str) -> str | None:
    """The project image a plugin layer shows, or None."""
    layer = find_layer(viewer, layer_name)
    return None if layer is None else layer.metadata.get(NAME_KEY)


def _upsert(viewer: Any, kind: str, layer_name: str, data: np.ndarray, image_name: str | None,
            **kwargs: Any) -> Any:
    """Replace the data of the plugin layer ``layer_name`` (or add it) and tag it with ``image_name``."""
    from napari.layers import Image, Labels

    layer = find_layer(viewer, layer_name)
    rgb = kwargs.get("rgb", False)
    expected = Labels if kind == "labels" else Image
    if layer is not None and (not isinstance(layer, expected) or layer.data.ndim != data.ndim
                              or (kind == "image" and bool(layer.rgb) != bool(rgb))):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        add = viewer.add_labels if kind == "labels" else viewer.add_image
        if kind == "labels":
            kwargs.pop("rgb", None)
        layer = add(data, name=layer_name, metadata={NAME_KEY: image_name}, **kwargs)
    else:
        layer.data = data
        layer.metadata = {**layer.metadata, NAME_KEY: image_name}
        if kind == "image":
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            else:
                layer.reset_contrast_limits()
        if not layer.visible:  # napari refreshes (redraws) the layer on every assignment, even an unchanged one
            layer.visible = True
    return layer


def _show_project_image(viewer: Any, project: Project, layer_name: str, name: str) -> tuple[int, ...]:
    """Show project image ``name`` in the image layer ``layer_name``; returns its spatial shape. A layer that
    already shows that image keeps its data (project images never change): no read from disk, no new texture,
    the user's contrast kept, which matters when new pseudo-labels refresh the image under review."""
    layer = find_layer(viewer, layer_name)
    if layer is not None and layer.metadata.get(NAME_KEY) == name:
        if not layer.visible:
            layer.visible = True
        return _spatial_shape(layer)
    image = project.image(name)
    spatial = tuple(image.shape[: image_layout(image, name=name)[0]])
    previous = None if layer is None else _spatial_shape(layer)
    shown = _upsert(viewer, "image", layer_name, image, name, **_image_kwargs(image, name))
    if previous != spatial:  # a smaller or larger image than the last one: fit it (the zoom is kept otherwise)
        _fit_view(viewer, shown)
    return spatial


def _fit_view(viewer: Any, layer: Any) -> None:
    """Fit the view to ``layer`` alone (the other, hidden, plugin layers may show an image of another size); all
    layers when the viewer has more dimensions than the layer (napari 0.9 cannot fit to such a layer alone)."""
    if layer.ndim == viewer.dims.ndim:
        viewer.reset_view(layers=[layer])
    else:
        viewer.reset_view()


def _spatial_shape(image_layer: Any) -> tuple[int, ...]:
    """The spatial shape of the data an image layer shows (without the colour axis of an RGB layer)."""
    shape = np.shape(image_layer.data)
    return tuple(shape[:-1] if image_layer.rgb else shape)


def _image_kwargs(image: np.ndarray, name: str) -> dict:
    _, channels = image_layout(image, name=name)
    return {"rgb": channels == 3}


def _set_visible(viewer: Any, names: tuple[str, ...], visible: bool) -> None:
    for layer_name in names:
        layer = find_layer(viewer, layer_name)
        if layer is not None:
            layer.visible = visible


def _remember(project: Project, key: str, image_name: str | None) -> None:
    """Store which image a set of layers shows, for the next opening; a convenience, so a project that cannot be
    written (read-only folder, busy database) still shows the image."""
    gui = dict(project.config.get(GUI_KEY) or {})
    if gui.get(key) != image_name:
        gui[key] = image_name
        try:
            project.update_config({GUI_KEY: gui})
        except DiffsegError as error:
            log.debug("not remembering the %s image: %s", key, error)


def create_annotate_layers(viewer: Any, project: Project, name: str) -> Iterator[None]:
    """Create the annotation layers that do not exist yet, hidden, for image ``name`` (the image layer holds it; the
    labels layer is empty and tagged with no image), yielding after each: the Annotate panel builds them one per
    event-loop turn when its tab comes up, so that "Open for labelling" only fills them (both added in the click's
    turn stalled the window for 0.4 s: benchmarks/gui_event_loop.md)."""
    if find_layer(viewer, ANNOTATE_IMAGE) is None:
        image = project.image(name)
        _upsert(viewer, "image", ANNOTATE_IMAGE, image, name, visible=False, **_image_kwargs(image, name))
        yield
    if find_layer(viewer, ANNOTATE_LABELS) is None:
        spatial = _spatial_shape(find_layer(viewer, ANNOTATE_IMAGE))
        _upsert(viewer, "labels", ANNOTATE_LABELS, np.zeros(spatial, np.uint8), None, visible=False)
        yield


def show_for_annotation(viewer: Any, project: Project, name: str) -> Any:
    """Show image ``name`` with an editable Labels layer of its spatial shape; returns the Labels layer.

    The labels start from the saved ground truth, else the latest pseudo-label, else empty.
    """
    spatial = _show_project_image(viewer, project, ANNOTATE_IMAGE, name)
    mask = project.label(name)
    if mask is None:
        pseudo = project.pseudo(name)
        mask = pseudo[0] if pseudo is not None else np.zeros(spatial, np.uint8)
    _set_visible(viewer, REVIEW_LAYERS, False)
    labels = _upsert(viewer, "labels", ANNOTATE_LABELS, np.asarray(mask, label_dtype(project)).copy(), name)
    labels.editable = True
    _remember(project, "annotate", name)
    return labels


PSEUDO_LABEL_COLOURS = ("#00e5ff", "#ffe600", "#ff3df2", "#7dff3d", "#ff8c1a")  # classes 1, 2, ...: they stand out
# on dark (fluorescence, EM) and on pink/brown (H&E, dermoscopy) images alike
UNSURE_FROM = 0.4  # normalised entropy from which the uncertainty overlay shows (p ~ 0.92)
OUTLINE_WIDTH = 2  # the pseudo-label is drawn as an outline by default: the image under it stays readable


def label_dtype(project: Project | None) -> type:
    """The dtype of a project's Labels layers: uint32 object ids in objects mode (core/objects), uint8 classes."""
    return np.uint32 if project is not None and project.objects else np.uint8


def style_pseudo_labels(layer: Any, project: Project) -> None:
    """Objects mode: one colour per object id (napari's cyclic label colours); regions: one colour per class."""
    from napari.utils.colormaps import CyclicLabelColormap, label_colormap

    objects = bool(project.objects)
    if objects and not isinstance(layer.colormap, CyclicLabelColormap):
        layer.colormap = label_colormap()
    elif not objects and isinstance(layer.colormap, CyclicLabelColormap):
        layer.colormap = pseudo_label_colormap(project.num_classes)


def pseudo_label_colormap(num_classes: int) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    colours = {None: "transparent", 0: "transparent"}
    for index in range(1, num_classes):
        colours[index] = PSEUDO_LABEL_COLOURS[(index - 1) % len(PSEUDO_LABEL_COLOURS)]
    return DirectLabelColormap(color_dict=colours)


def uncertainty_colormap() -> Any:
    """Transparent where the networks are sure, opaque orange where they are not: the image stays visible. The
    normalised entropy is already ~0.3 at 95 % confidence, so everything below 0.4 stays fully transparent."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[1.0, 0.85, 0.0, 0.0], [1.0, 0.85, 0.0, 0.0], [1.0, 0.45, 0.0, 0.85]],
                    controls=[0.0, UNSURE_FROM, 1.0], name="diffseg uncertainty")


def uncertainty_style() -> dict:
    """How every uncertainty layer is drawn (review, predicted): the colormap above over the image."""
    return {"colormap": uncertainty_colormap(), "blending": "translucent", "opacity": 1.0,
            "contrast_limits": (0.0, 1.0)}


def create_review_layers(viewer: Any, project: Project, name: str) -> Iterator[None]:
    """Create the review layers that do not exist yet, sized for image ``name``, yielding after each one. Adding a
    layer costs napari 0.1-0.3 s on the GUI thread (software OpenGL, 2 cores): a panel that runs one step per event
    loop turn keeps the window responding instead of freezing for all three at once. The overlays start hidden,
    empty and tagged with no image (a hidden layer costs no redraw; no panel takes an empty mask for a shown
    pseudo-label): show_for_review fills, tags and shows them."""
    if find_layer(viewer, REVIEW_IMAGE) is None:
        _set_visible(viewer, ANNOTATE_LAYERS, False)
        _show_project_image(viewer, project, REVIEW_IMAGE, name)
        yield
    spatial = _show_project_image(viewer, project, REVIEW_IMAGE, name)  # kept as is when it shows ``name``
    if find_layer(viewer, REVIEW_UNCERTAINTY) is None:
        _upsert(viewer, "image", REVIEW_UNCERTAINTY, np.zeros(spatial, np.float32), None, visible=False,
                **uncertainty_style())
        yield
    if find_layer(viewer, REVIEW_PSEUDO) is None:
        labels = _upsert(viewer, "labels", REVIEW_PSEUDO, np.zeros(spatial, np.uint8), None,
                         colormap=pseudo_label_colormap(project.num_classes), visible=False)
        labels.contour = OUTLINE_WIDTH
        yield


def show_for_review(viewer: Any, project: Project, name: str) -> Any:
    """Show image ``name`` with its latest pseudo-label (editable Labels) and uncertainty; returns the Labels layer."""
    for _ in create_review_layers(viewer, project, name):
        pass
    _set_visible(viewer, ANNOTATE_LAYERS, False)
    spatial = _show_project_image(viewer, project, REVIEW_IMAGE, name)
    pseudo = project.pseudo(name)
    if pseudo is None:
        mask, uncertainty = np.zeros(spatial, np.uint8), None
    else:
        mask, uncertainty = pseudo
    if uncertainty is None:
        uncertainty = np.zeros(spatial, np.float32)
    _upsert(viewer, "image", REVIEW_UNCERTAINTY, np.asarray(uncertainty, np.float32), name, **uncertainty_style())
    labels = _upsert(viewer, "labels", REVIEW_PSEUDO, np.asarray(mask, label_dtype(project)).copy(), name,
                     colormap=pseudo_label_colormap(project.num_classes))
    style_pseudo_labels(labels, project)  # objects: each object its colour, drawn as an outline
    labels.editable = True
    viewer.layers.selection.active = labels
    _remember(project, "review", name)
    return labels


def object_features(instances: np.ndarray, image: np.ndarray | None = None) -> Any:
    """The per-object table (core/objects/measure.py: area or volume, centroid, mean intensity, bounding box) as a
    Labels layer's features, one row per object id (napari shows them beside the id under the cursor)."""
    import pandas as pd

    from napari_diffseg.core.objects.measure import object_table

    try:
        rows = object_table(instances, image)
    except DiffsegError:  # an image of another shape than the mask: no intensities
        rows = object_table(instances)
    return pd.DataFrame([{"index": row.pop("id"), **row} for row in rows])


def show_prediction(viewer: Any, image: np.ndarray, mask: np.ndarray, uncertainty: np.ndarray | None,
                    name: str) -> Any:
    """Show one segmented file with its image in the reused Predict layers (no orphan result layers)."""
    _set_visible(viewer, ANNOTATE_LAYERS + REVIEW_LAYERS, False)
    _upsert(viewer, "image", PREDICT_IMAGE, image, name, **_image_kwargs(image, name))
    unc_layer = find_layer(viewer, PREDICT_UNCERTAINTY)
    if uncertainty is not None:
        _upsert(viewer, "image", PREDICT_UNCERTAINTY, np.asarray(uncertainty, np.float32), name,
                **uncertainty_style())
    elif unc_layer is not None:
        viewer.layers.remove(unc_layer)
    mask = np.asarray(mask)
    if mask.dtype.kind in "ui" and mask.dtype.itemsize > 1:  # instance ids of an objects model: kept, one colour each
        from napari.utils.colormaps import label_colormap

        labels = _upsert(viewer, "labels", PREDICT_MASK, mask, name, colormap=label_colormap())
        labels.colormap = label_colormap()  # also when the layer showed classes before
        labels.features = object_features(mask, image)
        return labels
    labels = _upsert(viewer, "labels", PREDICT_MASK, np.asarray(mask, np.uint8), name,
                     colormap=pseudo_label_colormap(max(2, int(np.max(mask)) + 1)))
    if type(labels.colormap).__name__ == "CyclicLabelColormap":  # it showed objects before
        labels.colormap = pseudo_label_colormap(max(2, int(np.max(mask)) + 1))
    return labels


class LargeOverview:
    """What the viewer shows of a large image while it is segmented block by block (core/prediction/large.py): every
    ``step``-th pixel of the image and of the mask written so far, held in memory and scaled onto full-resolution
    coordinates in the reused Predict layers, refreshed at most every REFRESH_SECONDS; once the output is complete,
    multiscale layers whose full-resolution level reads the written zarr mask and the image file lazily (napari
    reads only what is in view when zoomed in)."""

    REFRESH_SECONDS = 0.5

    def __init__(self, viewer: Any, piece: Any):
        self.viewer, self.name, self.step = viewer, piece.name, piece.step
        self.source, self.zarr_path = piece.source, piece.zarr_path
        self.mask = np.zeros(piece.overview_shape, np.uint8)
        self.image = np.zeros(piece.overview_shape + piece.image.shape[len(piece.overview_shape):], piece.image.dtype)
        self.rgb = self.image.ndim > self.mask.ndim
        low, high = (float(v) for v in np.percentile(piece.image, (1, 99.5))) if piece.image.size else (0.0, 1.0)
        self.contrast_limits = (low, high if high > low else low + 1)
        self._refreshed = 0.0
        self._put(piece)
        self._show([self.image], [self.mask], scale=(self.step,) * self.mask.ndim)

    def _show(self, image_levels: list, mask_levels: list, scale: tuple[int, ...]) -> None:
        _set_visible(self.viewer, ANNOTATE_LAYERS + REVIEW_LAYERS, False)
        for layer_name in PREDICT_LAYERS:
            layer = find_layer(self.viewer, layer_name)
            if layer is not None:
                self.viewer.layers.remove(layer)
        multiscale = len(image_levels) > 1
        metadata = {NAME_KEY: self.name}
        self.image_layer = self.viewer.add_image(
            image_levels if multiscale else image_levels[0], name=PREDICT_IMAGE, rgb=self.rgb, scale=scale,
            multiscale=multiscale, contrast_limits=None if self.rgb else self.contrast_limits, metadata=metadata)
        self.mask_layer = self.viewer.add_labels(
            mask_levels if multiscale else mask_levels[0], name=PREDICT_MASK, scale=scale, multiscale=multiscale,
            colormap=pseudo_label_colormap(2), metadata=metadata)

    def _put(self, piece: Any) -> None:
        self.mask[piece.region] = piece.mask
        self.image[piece.region] = piece.image

    def paste(self, piece: Any) -> None:
        """Put a newly written block into the overview; refresh the layers unless they were just refreshed."""
        self._put(piece)
        now = time.monotonic()
        if now - self._refreshed >= self.REFRESH_SECONDS:
            self._refreshed = now
            self.image_layer.refresh()
            self.mask_layer.refresh()

    def finish(self) -> None:
        """The output is complete: show it at full resolution where the view is zoomed in (read lazily)."""
        import zarr

        from napari_diffseg.core.prediction.large import open_lazy  # torch is loaded by now: the worker predicted with it

        mask = zarr.open_array(str(self.zarr_path), mode="r")
        image = open_lazy(self.source)
        if self.step == 1:
            self._show([image], [mask], scale=(1,) * self.mask.ndim)
        else:
            self._show([image, self.image], [mask, self.mask], scale=(1,) * self.mask.ndim)


def forget(project: Project, key: str) -> None:
    _remember(project, key, None)


def remove_plugin_layers(viewer: Any) -> None:
    """Remove the annotate and review layers (e.g. when another project is opened)."""
    for layer_name in ANNOTATE_LAYERS + REVIEW_LAYERS:
        layer = find_layer(viewer, layer_name)
        if layer is not None:
            viewer.layers.remove(layer)


def restore_layers(viewer: Any, project: Project) -> list[tuple[str, str]]:
    """Bring back the annotate / review layers the project had open; returns (kind, image name) pairs shown."""
    gui = project.config.get(GUI_KEY) or {}
    names = set(project.names())
    shown = []
    for key, show in (("annotate", show_for_annotation), ("review", show_for_review)):
        name = gui.get(key)
        if name and name in names:
            try:
                show(viewer, project, name)
                shown.append((key, name))
            except Exception as error:  # a missing or unreadable file must not stop the project from opening
                log.warning("could not restore the %s layers of %s: %s", key, name, error)
    return shown
