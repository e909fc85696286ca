"""The Train panel's live loss plot: loss per step, one line per stage, painted with QPainter in a few
milliseconds (a matplotlib redraw blocked the GUI thread for 50-300 ms on a busy 2-core machine; see
benchmarks/gui_event_loop.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

PLOTTED_LOSS = ("total", "supervised", "reconstruction")  # the first one present is plotted
STAGE_COLOURS = {"pretrain": "#ff9f40", "cotrain": "#4aa3ff", "supervised": "#49c56b"}


def plotted_value(losses: dict[str, float]) -> float | None:
    """The loss plotted for one step: 'total', else 'supervised', else 'reconstruction'."""
    for key in PLOTTED_LOSS:
        if key in losses:
            return float(losses[key])
    return None


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
    """Loss per step, one line per stage (log scale when all losses are positive), painted with QPainter in a few
    milliseconds, where a matplotlib redraw held the GUI thread for 50-300 ms on a busy 2-core machine.
    ``set_points`` is cheap; ``redraw`` schedules a repaint. Points are copied into numpy arrays incrementally
    (the list only grows during a run), so a repaint costs the same after 100 or 100 000 steps."""

    MARGINS = (46, 8, 8, 22)  # left, top, right, bottom (pixels)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.points: list[tuple[int, str, float]] = []
        self.draws = 0
        self._dirty = False
        self._source: list | None = None  # the list the arrays were built from, and how much of it
        self._steps = np.empty(0)
        self._values = np.empty(0)
        self._codes = np.empty(0, np.int64)
        self._stages: dict[str, int] = {}
        self.setFixedHeight(180)
        self.setMinimumWidth(160)

    def set_points(self, points: list[tuple[int, str, float]]) -> None:
        self.points = points
        self._dirty = True

    def redraw_if_needed(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        self._dirty = False
        self.draws += 1
        self.update()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        done = self._steps.size
        if self._source is not self.points or len(self.points) < done:
            self._source, done = self.points, 0
            self._steps, self._values, self._codes = np.empty(0), np.empty(0), np.empty(0, np.int64)
            self._stages = {}
        new = self.points[done:]
        if new:
            codes = [self._stages.setdefault(stage, len(self._stages)) for _, stage, _ in new]
            self._steps = np.concatenate((self._steps, np.fromiter((p[0] for p in new), float, len(new))))
            self._values = np.concatenate((self._values, np.fromiter((p[2] for p in new), float, len(new))))
            self._codes = np.concatenate((self._codes, np.array(codes, np.int64)))
        return self._steps, self._values, self._codes

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
        steps, values, codes = self._arrays()
        finite = np.isfinite(values)
        if not finite.any():
            painter.drawText(area, Qt.AlignCenter, "loss per step")
            return
        log_scale = bool(values[finite].min() > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ys = np.log10(values) if log_scale else values
        x_low, x_high = float(steps[finite].min()), float(steps[finite].max())
        x_span = (x_high - x_low) or 1.0
        y_low, y_high = float(ys[finite].min()), float(ys[finite].max())
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
            painter.drawText(QRectF(0, y - metrics.height() / 2, left - 4, metrics.height()),
                             Qt.AlignRight | Qt.AlignVCenter, f"{tick:g}")
        for tick in nice_ticks(x_low, x_high, False, integer=True):
            painter.drawText(QRectF(to_x(tick) - 30, area.bottom() + 2, 60, bottom - 2),
                             Qt.AlignHCenter | Qt.AlignTop, f"{tick:g}")
        painter.drawText(QRectF(0, area.bottom() + 2, left - 10, bottom - 2), Qt.AlignRight | Qt.AlignTop, "step")

        stages = [stage for stage, code in self._stages.items() if np.any(finite & (codes == code))]
        painter.setClipRect(area)
        for stage in stages:
            chosen = finite & (codes == self._stages[stage])
            xs, line_ys, dense = _envelope(to_x(steps[chosen]), to_y(ys[chosen]), area.width())
            painter.setRenderHint(QPainter.Antialiasing, not dense)  # a dense zigzag rasterises far faster
            painter.setPen(QPen(QColor(STAGE_COLOURS.get(stage, "#cccccc")), 1 if dense else 1.5))
            points = [QPointF(x, y) for x, y in zip(xs.tolist(), line_ys.tolist())]
            if len(points) == 1:
                painter.drawEllipse(points[0], 2.0, 2.0)
            painter.drawPolyline(QPolygonF(points))
        painter.setClipping(False)
        painter.setRenderHint(QPainter.Antialiasing)
        widest = max(metrics.horizontalAdvance(stage) for stage in stages)
        backdrop = QColor(self.palette().color(self.backgroundRole()))
        backdrop.setAlpha(200)
        painter.fillRect(QRectF(area.right() - widest - 30, area.top() + 1, widest + 29,
                                metrics.height() * len(stages) + 4), backdrop)
        y = area.top() + 2
        for stage in stages:  # legend, top right
            width = metrics.horizontalAdvance(stage)
            x = area.right() - width - 26
            middle = y + metrics.height() / 2
            painter.setPen(QPen(QColor(STAGE_COLOURS.get(stage, "#cccccc")), 2))
            painter.drawLine(QPointF(x, middle), QPointF(x + 14, middle))
            painter.setPen(QPen(text_colour, 1))
            painter.drawText(QRectF(x + 18, y, width + 4, metrics.height()), Qt.AlignLeft | Qt.AlignVCenter, stage)
            y += metrics.height()
