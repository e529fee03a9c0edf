"""The pictures a training run leaves to look at: preview grids, loss curves, confusion matrices.

Every file is written atomically (a viewer refreshing it never sees half a
PNG). matplotlib is used headless (Agg) and imported only here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from emostyle_rt.errors import ImageWriteError
from emostyle_rt.fsutil import write_bytes_atomic


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an HxWx3 uint8 RGB array as a PNG, atomically."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ImageWriteError(f"OpenCV could not encode {path} as PNG.")
    return write_bytes_atomic(path, buf.tobytes())


def image_grid(rows: Sequence[Sequence[np.ndarray]], tile: int, pad: int = 4) -> np.ndarray:
    """Rows of RGB images -> one RGB image, each tile fitted into ``tile`` x ``tile`` on white."""
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            h, w = img.shape[:2]
            s = tile / max(h, w)
            small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            y, x = pad + r * (tile + pad), pad + c * (tile + pad)
            out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _save_figure(fig: object, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]
    return write_bytes_atomic(path, buf.getvalue())


def _pyplot() -> object:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the raw per-step losses are noisy)."""
    v = np.asarray(values, np.float64)
    if window <= 1 or len(v) < 2:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[np.arange(1, len(v) + 1)] - c[np.arange(1, len(v) + 1) - n]) / n


def loss_curves(path: Path, history: Mapping[str, Sequence[float]], title: str) -> Path:
    """One panel per loss term (log scale): raw per-step values faint, a moving average on top."""
    plt = _pyplot()
    terms = [k for k in ("total", "content", "style", "tv", "temporal") if k in history and any(history[k])]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)  # type: ignore[attr-defined]
    steps = np.arange(1, len(history["total"]) + 1)
    window = max(1, len(steps) // 50)
    for ax, term in zip(axes[0], terms):
        v = np.maximum(np.asarray(history[term], np.float64), 1e-12)
        ax.plot(steps, v, color="0.75", lw=0.6)
        ax.plot(steps, smooth(v, window), color="C0", lw=1.4)
        ax.set_yscale("log")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, y=1.03)
    return _save_figure(fig, path)


def classifier_curves(path: Path, history: Mapping[str, Sequence[float]]) -> Path:
    """Loss and accuracy per epoch, training and validation."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))  # type: ignore[attr-defined]
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in ((ax1, "loss"), (ax2, "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if history.get(prefix + key):
                ax.plot(epochs, history[prefix + key], marker=".", label=label)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_figure(fig, path)


def confusion_matrix_png(path: Path, matrix: np.ndarray, labels: Sequence[str], title: str) -> Path:
    """Counts with row-normalised colours (rows: true emotion, columns: predicted)."""
    plt = _pyplot()
    m = np.asarray(matrix)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))  # type: ignore[attr-defined]
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    ax.set_title(title)
    return _save_figure(fig, path)
