"""Multinomial logistic regression (L2, no intercept) solved with L-BFGS in NumPy.

Step 3 of the MSN low-shot protocol (see :mod:`keras_vitmsn.lowshot`): fit a
multinomial logistic regression with an L2 penalty and no intercept. cyanure minimises
``(1/n) sum_i CE(y_i, W x_i) + (lambd/2) ||W||^2`` and the authors' ``logistic_eval.py``
passes ``lambd = --lambd / n``; we solve the same problem, so ``l2_penalty`` has the
meaning of the script's ``--lambd``. The script's argparse default is ``0.00025`` while
the command its README gives for the low-shot splits uses ``--lambd 0.0025``; we
default to the README's ``0.0025`` (:data:`DEFAULT_L2_PENALTY`). In scikit-learn terms
the objective equals ``LogisticRegression(C=1 / l2_penalty, fit_intercept=False)`` with
the multinomial loss.

The regression is solved in NumPy (float64) with L-BFGS and a strong-Wolfe line
search; nothing here needs scikit-learn or SciPy, nor Keras. cyanure stops at a
relative duality gap of 1e-3; we solve to a tighter tolerance, so accuracies can differ
from the original script's in the last decimals.
"""

import math
import numbers
import warnings

import numpy as np

__all__ = ["DEFAULT_L2_PENALTY", "LogisticRegression", "LowShotConvergenceWarning"]

#: ``--lambd`` of the README's low-shot command in facebookresearch/msn (the script's
#: own argparse default is 10x smaller, 0.00025). Divided by the number of training
#: images inside, as ``logistic_eval.py`` does before calling cyanure.
DEFAULT_L2_PENALTY = 0.0025


class LowShotConvergenceWarning(UserWarning):
    """The logistic-regression solver stopped before reaching its tolerance."""


class _SoftmaxObjective:
    """``f(W) = mean_i CE(y_i, x_i W) + (l2 / n) / 2 * ||W||^2`` and its gradient."""

    def __init__(self, x, y, num_classes, l2_penalty):
        self.x = x
        self.y = y
        self.n = len(x)
        self.rows = np.arange(self.n)
        self.num_classes = num_classes
        self.reg = l2_penalty / self.n

    def __call__(self, w):
        logits = self.x @ w
        logits -= logits.max(axis=1, keepdims=True)  # stable exp; cancels in the CE
        exp = np.exp(logits)
        total = exp.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - logits[self.rows, self.y])
        residual = exp / total
        residual[self.rows, self.y] -= 1.0
        grad = self.x.T @ residual / self.n + self.reg * w
        return loss + 0.5 * self.reg * np.vdot(w, w), grad


def _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi):
    """Minimiser of the cubic through two points with slopes, or None."""
    d1 = d_lo + d_hi - 3.0 * (f_lo - f_hi) / (a_lo - a_hi)
    disc = d1 * d1 - d_lo * d_hi
    if not np.isfinite(disc) or disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), a_hi - a_lo)
    denom = d_hi - d_lo + 2.0 * d2
    if denom == 0:
        return None
    return a_hi - (a_hi - a_lo) * (d_hi + d2 - d1) / denom


def _strong_wolfe(fun, w, f0, g0, direction, step, c1=1e-4, c2=0.9, max_evals=40):
    """Line search for the strong Wolfe conditions (Nocedal & Wright, alg. 3.5/3.6).

    Returns ``(step, f, g)`` or None when no step decreasing ``f`` was found.
    """
    d0 = np.vdot(g0, direction)
    prev = (0.0, f0, d0, g0)
    best = None  # the best point meeting the sufficient-decrease condition
    lo = hi = None
    evals = 0
    while evals < max_evals:
        evals += 1
        f, g = fun(w + step * direction)
        d = np.vdot(g, direction)
        armijo = np.isfinite(f) and f <= f0 + c1 * step * d0
        if armijo and (best is None or f < best[1]):
            best = (step, f, g)
        if not armijo or (evals > 1 and f >= prev[1]):
            lo, hi = prev, (step, f, d, g)
            break
        if abs(d) <= -c2 * d0:
            return step, f, g
        if d >= 0:
            lo, hi = (step, f, d, g), prev
            break
        prev = (step, f, d, g)
        step *= 2.0
    if lo is None:
        return best
    # Zoom between lo (lower f, meets sufficient decrease) and hi.
    while evals < max_evals:
        evals += 1
        a_lo, a_hi = lo[0], hi[0]
        width = a_hi - a_lo
        trial = None
        if np.isfinite(hi[1]):
            trial = _cubic_min(a_lo, lo[1], lo[2], a_hi, hi[1], hi[2])
        # Safeguard: stay well inside the interval, else bisect.
        low_end, high_end = sorted((a_lo + 0.1 * width, a_hi - 0.1 * width))
        if trial is None or not (low_end <= trial <= high_end):
            trial = a_lo + 0.5 * width
        f, g = fun(w + trial * direction)
        d = np.vdot(g, direction)
        armijo = np.isfinite(f) and f <= f0 + c1 * trial * d0
        if armijo and (best is None or f < best[1]):
            best = (trial, f, g)
        if not armijo or f >= lo[1]:
            hi = (trial, f, d, g)
        else:
            if abs(d) <= -c2 * d0:
                return trial, f, g
            if d * width >= 0:
                hi = lo
            lo = (trial, f, d, g)
        if abs(hi[0] - lo[0]) <= 1e-16 * max(1.0, abs(lo[0])):
            break
    return best


def _lbfgs(fun, w0, max_iter, tol, memory=20):
    """Minimise a smooth convex ``fun(w) -> (f, grad)``; returns (w, f, g, iters, ok)."""
    w = w0
    f, g = fun(w)
    g0_norm = np.max(np.abs(g))
    target = tol * max(g0_norm, 1e-300)
    # When no step can decrease the objective at floating-point precision, a gradient
    # at rounding level (sqrt(eps) of its start) is as converged as the problem gets:
    # where that happens depends on the BLAS's rounding (one problem stalled at 3e-10
    # on an AMD Zen 5, below 1e-10 elsewhere). scipy's L-BFGS-B stops there too, and
    # sklearn counts that stop as converged.
    floor = max(target, np.sqrt(np.finfo(float).eps) * max(g0_norm, 1.0))
    s_hist, y_hist, rho_hist = [], [], []
    for it in range(max_iter):
        if np.max(np.abs(g)) <= target:
            return w, f, g, it, True
        # Two-loop recursion: direction = -H g.
        q = g.copy()
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a = rho * np.vdot(s, q)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= np.vdot(s_hist[-1], y_hist[-1]) / np.vdot(y_hist[-1], y_hist[-1])
            first_step = 1.0
        else:
            # No curvature yet: a first step of unit length in parameter space.
            first_step = 1.0 / max(np.linalg.norm(g), 1e-300)
        for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
            b = rho * np.vdot(y, q)
            q += (a - b) * s
        direction = -q
        if np.vdot(direction, g) >= 0:  # not a descent direction: restart
            s_hist, y_hist, rho_hist = [], [], []
            direction = -g
            first_step = 1.0 / max(np.linalg.norm(g), 1e-300)
        found = _strong_wolfe(fun, w, f, g, direction, first_step)
        if found is None and s_hist:
            # The quasi-Newton model went stale: retry along the gradient.
            s_hist, y_hist, rho_hist = [], [], []
            direction = -g
            found = _strong_wolfe(fun, w, f, g, direction, 1.0 / max(np.linalg.norm(g), 1e-300))
        if found is None:
            # No decrease possible at floating-point precision: as converged as it gets.
            return w, f, g, it, np.max(np.abs(g)) <= floor
        step, f_new, g_new = found
        s = step * direction
        y = g_new - g
        sy = np.vdot(s, y)
        if sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            s_hist.append(s)
            y_hist.append(y)
            rho_hist.append(1.0 / sy)
            if len(s_hist) > memory:
                del s_hist[0], y_hist[0], rho_hist[0]
        converged_f = f - f_new <= 1e-15 * max(abs(f), abs(f_new), 1.0)
        w, f, g = w + s, f_new, g_new
        if converged_f and np.max(np.abs(g)) <= max(target, 1e-10):
            return w, f, g, it + 1, True
    return w, f, g, max_iter, np.max(np.abs(g)) <= target


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty and no intercept (NumPy).

    Minimises, over ``W`` of shape ``(D, K)``,
    ``(1/n) sum_i CE(y_i, softmax(x_i W)) + (l2_penalty / n) / 2 * ||W||_F^2``:
    cyanure's ``MultiClassifier(loss="multiclass-logistic", penalty="l2",
    fit_intercept=False)`` with ``lambd = l2_penalty / n`` as in MSN's
    ``logistic_eval.py``, i.e. scikit-learn's
    ``LogisticRegression(C=1 / l2_penalty, fit_intercept=False)`` (multinomial). The
    problem is strictly convex, so the solution is unique; L-BFGS (memory 20) with a
    strong-Wolfe line search finds it in float64.

    Args:
        l2_penalty: float > 0, the MSN script's ``--lambd``.
        max_iter: int, L-BFGS iterations at most.
        tol: float, stop when the largest gradient entry is below ``tol`` times its
            value at ``W = 0``.

    Attributes (after ``fit``):
        classes_: the sorted distinct labels seen in ``fit``.
        coef_: ``(K, D)`` weights (scikit-learn's layout).
        n_iter_, converged_, objective_: solver diagnostics.

    Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> clf = LogisticRegression().fit(x, ["a", "a", "b", "b"])
    >>> clf.predict(np.array([[0.8, 0.2], [0.2, 0.8]])).tolist()
    ['a', 'b']
    """

    def __init__(self, l2_penalty=DEFAULT_L2_PENALTY, max_iter=1000, tol=1e-6):
        if not (isinstance(l2_penalty, numbers.Real) and l2_penalty > 0):
            raise ValueError(
                f"`l2_penalty` must be a positive number (MSN's --lambd, e.g. "
                f"{DEFAULT_L2_PENALTY}), got {l2_penalty!r}."
            )
        if int(max_iter) < 1:
            raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}.")
        if not tol > 0:
            raise ValueError(f"`tol` must be positive, got {tol!r}.")
        self.l2_penalty = float(l2_penalty)
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def fit(self, x, y):
        """Fit on features ``x`` ``(n, D)`` and labels ``y`` ``(n,)``; returns self."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        if x.ndim != 2:
            raise ValueError(f"`x` must be 2-D (num_samples, dim), got shape {x.shape}.")
        if y.shape != (len(x),):
            raise ValueError(
                f"`y` must be 1-D with one label per row of `x` ({len(x)}), got shape {y.shape}."
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("`x` contains NaN or infinite values.")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"Need at least 2 classes to fit a classifier, got {len(self.classes_)}."
            )
        objective = _SoftmaxObjective(x, y_index, len(self.classes_), self.l2_penalty)
        w0 = np.zeros((x.shape[1], len(self.classes_)))
        w, f, _, n_iter, converged = _lbfgs(objective, w0, self.max_iter, self.tol)
        self.coef_ = w.T.copy()
        self.objective_ = float(f)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        if not converged:
            warnings.warn(
                f"LogisticRegression did not converge in {self.max_iter} iterations "
                f"(tol={self.tol}); increase `max_iter` or `tol`.",
                LowShotConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _check_fitted(self, x):
        if not hasattr(self, "coef_"):
            raise ValueError("This LogisticRegression is not fitted yet; call fit first.")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"`x` must have shape (num_samples, {self.coef_.shape[1]}), got {x.shape}."
            )
        return x

    def decision_function(self, x):
        """Logits ``(n, K)``."""
        return self._check_fitted(x) @ self.coef_.T

    def predict_proba(self, x):
        """Class probabilities ``(n, K)``, columns in ``classes_`` order."""
        logits = self.decision_function(x)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, x):
        """Most likely label per row."""
        logits = self.decision_function(x)  # checks fitted first
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, x, y):
        """Top-1 accuracy in [0, 1]."""
        return float(np.mean(self.predict(x) == np.asarray(y)))
