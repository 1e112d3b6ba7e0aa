"""What an MSN run reports: one line per epoch, ``metrics.csv``, ``msn_curves.png``.

The line: epoch, step, images/s, time left, the loss and its terms (cross-entropy,
me-max, prototype perplexity; :func:`keras_vitmsn.msn.msn_loss`) and the learning
rate. The CSV has one row per epoch (two for an epoch a stop split: each covers the
steps it says) and is rewritten whole, atomically, after each epoch; a resumed run
keeps the rows up to its checkpoint. The plot (matplotlib, when installed) draws the
curves the paper's training logs follow: ce, me-max, prototype perplexity, learning
rate.
"""

import csv
import io
import os
import sys
import tempfile
import time

import keras

from keras_vitmsn.msn.checkpoints import current_step
from keras_vitmsn.utils import apply_umask

METRICS_FILE = "metrics.csv"
CURVES_FILE = "msn_curves.png"
COLUMNS = (
    "epoch",
    "step",
    "steps",
    "loss",
    "ce",
    "me_max",
    "prototype_perplexity",
    "prototype_entropy",
    "anchor_entropy",
    "target_max",
    "num_target_prototypes",
    "learning_rate",
    "images_per_second",
    "seconds",
)
PLOTTED = ("ce", "me_max", "prototype_perplexity", "learning_rate")


def read_metrics(path, up_to_step=None):
    """The rows of a ``metrics.csv`` (dicts of floats), those up to ``up_to_step``."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    if up_to_step is not None:
        rows = [r for r in rows if r.get("step", 0) <= up_to_step]
    return rows


def _format_time(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class MSNRunLog(keras.callbacks.Callback):
    """One line per epoch on ``stream`` and ``metrics.csv`` in ``directory`` (None: the
    line only); ``msn_curves.png`` at the end of training.

    Args:
        directory: the run's output folder, or None.
        steps_per_epoch, epochs, batch_size: the run's.
        resume_step: the step the run continues from (rows after it are dropped).
        stream: where the lines go (``sys.stderr`` when None).
    """

    def __init__(self, directory, steps_per_epoch, epochs, batch_size, resume_step=0, stream=None):
        super().__init__()
        self.directory = directory
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.batch_size = batch_size
        self.stream = stream
        self.path = None if directory is None else os.path.join(directory, METRICS_FILE)
        self.rows = [] if self.path is None else read_metrics(self.path, resume_step)
        self._seconds_per_step = None

    def _step(self):
        return current_step(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._start_time = time.monotonic()
        self._start_step = self._step()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = self._step()
        steps = step - self._start_step
        seconds = time.monotonic() - self._start_time
        if steps <= 0:
            return
        rate = seconds / steps
        # Smoothed: the first epoch includes compilation.
        self._seconds_per_step = (
            rate if self._seconds_per_step is None else 0.7 * self._seconds_per_step + 0.3 * rate
        )
        row = {"epoch": epoch + 1, "step": step, "steps": steps, "seconds": seconds}
        row["images_per_second"] = steps * self.batch_size / max(seconds, 1e-9)
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for key in COLUMNS:
            if key in logs:
                row[key] = float(keras.ops.convert_to_numpy(logs[key]))
        self.rows.append(row)
        left = (self.epochs * self.steps_per_epoch - step) * self._seconds_per_step
        terms = "  ".join(
            f"{key} {row[key]:.4g}"
            for key in ("loss", "ce", "me_max", "prototype_perplexity")
            if key in row
        )
        print(
            f"epoch {epoch + 1}/{self.epochs}  step {step}  {terms}  "
            f"lr {row['learning_rate']:.3g}  {row['images_per_second']:.1f} img/s  "
            f"{_format_time(left)} left",
            file=self.stream or sys.stderr,
            flush=True,
        )
        if self.path is not None:
            self._write_csv()

    def _write_csv(self):
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_value(k, row.get(k)) for k in COLUMNS})
        _atomic_text(self.path, text.getvalue())

    def on_train_end(self, logs=None):
        if self.directory is not None and self.rows:
            plot_curves(self.rows, os.path.join(self.directory, CURVES_FILE))


def _csv_value(key, value):
    if value is None:
        return ""
    if key in ("epoch", "step", "steps"):
        return int(value)
    return f"{value:.6g}"


def _atomic_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".csv")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        apply_umask(tmp)  # mkstemp's 0600: a plain open's
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def plot_curves(rows, path):
    """Plot ce, me-max, prototype perplexity and learning rate against the step to
    ``path`` (PNG); returns ``path``, or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    # The object API: no pyplot, so the process's matplotlib backend is left alone.
    figure = Figure(figsize=(9, 6))
    FigureCanvasAgg(figure)
    steps = [r["step"] for r in rows]
    for i, key in enumerate(PLOTTED):
        ax = figure.add_subplot(2, 2, i + 1)
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker=".")
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("step")
    figure.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=100)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
