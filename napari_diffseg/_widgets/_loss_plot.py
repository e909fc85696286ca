"""The Train panel's live loss plot: each part of the loss (supervised, unlabelled, pseudo-label rounds, stage 1) as
its own smoothed line with a legend, a dashed mark where co-training starts and where the unlabelled images join,
and labelled axes; painted with QPainter in a few milliseconds (a matplotlib redraw blocked the GUI thread for
50-300 ms on a busy 2-core machine; see benchmarks/gui_event_loop.md).

One line for the total loss alarmed users: it is ~0.02 through the supervised warm-up, then jumps when the
unlabelled part joins, and the rounds part (computed every few steps only) made it a saw-tooth. Parts drawn
apart, smoothed, each over the steps that have it, show what each does. The engine's "supervised" and
"unsupervised" of a co-training step are the sums over both networks with the rounds' terms inside (they double at
the join and jump on every step with rounds), so the plot takes the parts apart where the engine logs them
(``core.method.teacher.CoTrainingLosses``): one network's mask loss on labelled and on unlabelled patches, and the
rounds' terms; a step without them (the warm-up, labels-only, stage 1, Mean Teacher) has only its own part.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

# (legend name, loss keys: the first present in a step's losses is that part's value, colour); mask_labelled and
# mask_unlabelled are per network, as the warm-up's and Mean Teacher's supervised and cps are
SERIES = (("supervised", ("mask_labelled", "supervised"), "#49c56b"),
          ("unlabelled", ("mask_unlabelled", "cps"), "#4aa3ff"),
          ("rounds", ("rounds",), "#ff9f40"),
          ("stage 1 (no labels)", ("reconstruction",), "#c78bff"))
SMOOTHING_STEPS = 20  # exponential moving average over about this many of a part's points
UNLABELLED_WEIGHT = "unlabelled_weight"  # in the losses of a co-training step: 0 during the supervised warm-up
PLOT_HELP = ("Loss parts per network, smoothed. Unlabelled and rounds join after the warm-up (dashed mark), "
             "higher than supervised: expected, not a failure.")
PLOT_TOOLTIP = ("Supervised: one network's mask loss on the labelled images (should fall). Unlabelled: the twins "
                "learning from each other on the unlabelled images, from the end of the warm-up (dashed mark); it "
                "starts higher and falls more slowly. Rounds: the teacher rebuilding images from its own masks, "
                "logged on the steps that run them (every few steps). Stage 1: the teacher pretrained without "
                "labels.")


class _Series:
    """One part's points and their running smoothing, grown as steps arrive."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.smoothed: list[float] = []
        self._average: float | None = None
        self._seen = 0
        self._arrays = (np.empty(0), np.empty(0))

    def add(self, step: float, value: float) -> None:
        if not math.isfinite(value):
            return
        self._seen += 1
        weight = max(2.0 / (SMOOTHING_STEPS + 1), 1.0 / self._seen)  # the first points are a plain mean
        self._average = value if self._average is None else self._average + weight * (value - self._average)
        self.steps.append(step)
        self.smoothed.append(self._average)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, smoothed values) as arrays, extended by what arrived since the last call only."""
        done = self._arrays[0].size
        if done < len(self.steps):
            self._arrays = (np.concatenate((self._arrays[0], np.asarray(self.steps[done:], float))),
                            np.concatenate((self._arrays[1], np.asarray(self.smoothed[done:], float))))
        return self._arrays


def nice_ticks(low: float, high: float, log_scale: bool, most: int = 5, integer: bool = False) -> list[float]:
    """Round tick values between ``low`` and ``high`` (data units): 1-2-5 steps (whole numbers with ``integer``),
    or 1-2-5 x powers of ten on a log scale; at most about ``most`` of them."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low or (log_scale and low <= 0):
        return []
    if log_scale:
        ticks: list[float] = []
        for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
            ticks = [m * 10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                     for m in mantissas if low <= m * 10.0**e <= high]
            if len(ticks) >= 3:
                break
        return ticks[::max(1, math.ceil(len(ticks) / most))]
    raw = (high - low) / max(1, most - 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def _envelope(xs: np.ndarray, ys: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pixel coordinates of a polyline; with more points than half the pixel columns, its per-column (min, max)
    zigzag instead: the same look with at most two points per column, however many steps. Returns (xs, ys, dense).
    """
    if xs.size <= width / 2:
        return xs, ys, False
    columns = xs.astype(np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(columns)) + 1))
    lows, highs = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    odd = np.arange(starts.size) % 2 == 1  # alternate (high, low) / (low, high): one continuous zigzag
    first, second = np.where(odd, lows, highs), np.where(odd, highs, lows)
    return (np.repeat(columns[starts].astype(float), 2), np.column_stack((first, second)).ravel(), True)


class LossPlot(QWidget):
    """The loss parts per step (SERIES), smoothed, log scale when all are positive. ``set_points`` takes the run's
    list of ``(step, stage, losses)`` (the state's, which grows during a run) and is cheap; ``redraw`` schedules a
    repaint. New points are folded in incrementally, so a repaint costs the same after 100 or 100 000 steps."""

    MARGINS = (50, 8, 8, 36)  # left, top, right, bottom (pixels): tick labels and an axis title at left, bottom

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.points: list[tuple[int, str, dict[str, float]]] = []
        self.draws = 0
        self._dirty = False
        self._source: list | None = None  # the list the series were built from, and how much of it
        self._done = 0
        self.series: dict[str, _Series] = {}
        self.marks: dict[str, float] = {}  # label -> step: where co-training starts, where the unlabelled join
        self._last_stage: str | None = None
        self.setFixedHeight(170)
        self.setToolTip(PLOT_TOOLTIP)
        self.setMinimumWidth(160)

    def set_points(self, points: list[tuple[int, str, dict[str, float]]]) -> None:
        self.points = points
        self._dirty = True

    def redraw_if_needed(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        self._dirty = False
        self.draws += 1
        self.update()

    def update_series(self) -> dict[str, _Series]:
        """Fold the points not seen yet into the series and marks (from scratch for a new list)."""
        if self._source is not self.points or len(self.points) < self._done:
            self._source, self._done = self.points, 0
            self.series, self.marks, self._last_stage = {}, {}, None
        for step, stage, losses in self.points[self._done:]:
            if stage == "cotrain" and self._last_stage == "pretrain":
                self.marks.setdefault("co-training", float(step))
            self._last_stage = stage
            if losses.get(UNLABELLED_WEIGHT, 0.0) > 0:
                self.marks.setdefault("unlabelled join", float(step))
            for name, keys, _ in SERIES:
                key = next((k for k in keys if k in losses), None)
                if key is not None:
                    self.series.setdefault(name, _Series()).add(float(step), float(losses[key]))
        self._done = len(self.points)
        return self.series

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.Antialiasing)
        text_colour = self.palette().color(self.foregroundRole())
        font = QFont(self.font())
        if font.pointSizeF() > 0:
            font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        left, top, right, bottom = self.MARGINS
        area = QRectF(left, top, max(1, self.width() - left - right), max(1, self.height() - top - bottom))
        painter.setPen(QPen(text_colour, 1))
        painter.drawRect(area)
        series = {name: part for name, part in self.update_series().items() if part.steps}
        if not series:
            painter.drawText(area, Qt.AlignCenter, "loss parts per step")
            return
        arrays = {name: part.arrays() for name, part in series.items()}
        steps = {name: pair[0] for name, pair in arrays.items()}
        values = {name: pair[1] for name, pair in arrays.items()}
        every = np.concatenate(list(values.values()))
        log_scale = bool(every.min() > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ys = {name: (np.log10(v) if log_scale else v) for name, v in values.items()}
        all_steps = np.concatenate(list(steps.values()))
        x_low, x_high = float(all_steps.min()), float(all_steps.max())
        x_span = (x_high - x_low) or 1.0
        all_ys = np.concatenate(list(ys.values()))
        y_low, y_high = float(all_ys.min()), float(all_ys.max())
        pad = (y_high - y_low) * 0.05 or 0.5
        y_low, y_high = y_low - pad, y_high + pad

        def to_x(step: Any) -> Any:
            return area.left() + (step - x_low) / x_span * area.width()

        def to_y(value: Any) -> Any:
            return area.bottom() - (value - y_low) / (y_high - y_low) * area.height()

        grid = QColor(text_colour)
        grid.setAlpha(50)
        data_range = (10.0**y_low, 10.0**y_high) if log_scale else (y_low, y_high)
        for tick in nice_ticks(*data_range, log_scale):
            y = to_y(math.log10(tick) if log_scale else tick)
            painter.setPen(QPen(grid, 1))
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            painter.setPen(QPen(text_colour, 1))
            painter.drawText(QRectF(12, y - metrics.height() / 2, left - 16, metrics.height()),
                             Qt.AlignRight | Qt.AlignVCenter, f"{tick:g}")
        for tick in nice_ticks(x_low, x_high, False, integer=True):
            painter.drawText(QRectF(to_x(tick) - 30, area.bottom() + 2, 60, metrics.height()),
                             Qt.AlignHCenter | Qt.AlignTop, f"{tick:g}")
        painter.drawText(QRectF(area.left(), self.height() - metrics.height() - 1, area.width(), metrics.height()),
                         Qt.AlignHCenter | Qt.AlignBottom, "training step")
        painter.save()  # the y-axis title, written upwards along the left edge
        painter.translate(2, area.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-area.height() / 2, 0, area.height(), metrics.height()), Qt.AlignCenter,
                         "loss (log scale)" if log_scale else "loss")
        painter.restore()

        painter.setClipRect(area)
        mark_pen = QPen(text_colour, 1, Qt.DashLine)
        for label, step in self.marks.items():
            x = to_x(step)
            painter.setPen(mark_pen)
            painter.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
            painter.drawText(QRectF(x + 3, area.bottom() - metrics.height() - 2, metrics.horizontalAdvance(label) + 4,
                                    metrics.height()), Qt.AlignLeft | Qt.AlignVCenter, label)
        colours = {name: colour for name, _, colour in SERIES}
        for name in series:
            xs, line_ys, dense = _envelope(to_x(steps[name]), to_y(ys[name]), area.width())
            painter.setRenderHint(QPainter.Antialiasing, not dense)  # a dense zigzag rasterises far faster
            painter.setPen(QPen(QColor(colours[name]), 1 if dense else 1.5))
            points = [QPointF(x, y) for x, y in zip(xs.tolist(), line_ys.tolist())]
            if len(points) == 1:
                painter.drawEllipse(points[0], 2.0, 2.0)
            painter.drawPolyline(QPolygonF(points))
        painter.setClipping(False)
        painter.setRenderHint(QPainter.Antialiasing)
        widest = max(metrics.horizontalAdvance(name) for name in series)
        backdrop = QColor(self.palette().color(self.backgroundRole()))
        backdrop.setAlpha(200)
        painter.fillRect(QRectF(area.right() - widest - 30, area.top() + 1, widest + 29,
                                metrics.height() * len(series) + 4), backdrop)
        y = area.top() + 2
        for name in series:  # legend, top right
            width = metrics.horizontalAdvance(name)
            x = area.right() - width - 26
            middle = y + metrics.height() / 2
            painter.setPen(QPen(QColor(colours[name]), 2))
            painter.drawLine(QPointF(x, middle), QPointF(x + 14, middle))
            painter.setPen(QPen(text_colour, 1))
            painter.drawText(QRectF(x + 18, y, width + 4, metrics.height()), Qt.AlignLeft | Qt.AlignVCenter, name)
            y += metrics.height()
