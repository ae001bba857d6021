r"""Streaming class statistics of one layer, and the checks of the collapse functions' inputs.

Samples ``h_i`` with labels ``y_i`` and masses ``a_i`` (summing to one; ``1/N`` unless weights are
given) give class masses $p_k = \sum_{y_i=k} a_i$, class means $m_k$ and the within-class sums of
squares, merged block by block in float64 (Chan, Golub & LeVeque's pairwise update):

$$m \leftarrow m + \delta\,\frac{w_b}{w + w_b},\qquad
  SS \leftarrow SS + SS_b + \lVert\delta\rVert^2 \frac{w\,w_b}{w + w_b},\qquad
  \delta = m_b - m .$$

$\Sigma_B = \frac1K\sum_k (m_k - m_G)(m_k - m_G)^\top$ (with $m_G$ the unweighted mean of the class
means) lives in the span of the centred class means, so the SVD of the ``K x d`` matrix of centred
means gives $\Sigma_B = U\operatorname{diag}(\lambda)U^\top$, and a second pass accumulates the
``min(K, d)``-square projection $U^\top\Sigma_W U$: no ``d x d`` matrix is formed and a memory map is
never read whole.

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm for computing
sample variances", 1979.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from otcollapse import _utils
from otcollapse._results import Result
from otcollapse._utils import ArrayLike, check_not_complex, iter_rows, to_numpy
from otcollapse._validation import check_int, check_labels, check_real, check_weights
from otcollapse.transport.geometry import rows_per_block

__all__ = ["DEFAULT_RTOL", "ClassStatistics", "class_statistics"]

#: relative eigenvalue cutoff of the pseudo-inverse of Sigma_B: eigenvalues <= rtol * max count as 0
DEFAULT_RTOL = 1e-10

#: a linear classifier: W of shape (K, d) and an optional bias of length K
Head = tuple[np.ndarray, np.ndarray | None]


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_features(features: ArrayLike) -> Any:
    x = features
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = to_numpy(x, dtype=np.float64, what="features")
    check_not_complex(x, "features")
    if len(x.shape) != 2:
        raise ValueError(
            f"features have shape {tuple(x.shape)}; give a 2-D array (n_samples, n_features) "
            "(flatten or pool feature maps first, e.g. x.reshape(n, -1))."
        )
    if int(x.shape[0]) == 0 or int(x.shape[1]) == 0:
        raise ValueError(
            f"features are empty (shape {tuple(x.shape)}); collapse metrics need data."
        )
    return x


def _check_finite(values: np.ndarray, what_contain: str) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what_contain} NaN or inf values.")


def _check_classifier(classifier: Any, d: int) -> Head:
    if isinstance(classifier, tuple | list):
        if len(classifier) != 2:
            raise ValueError("classifier must be W of shape (K, d) or a pair (W, b).")
        W, b = classifier
    else:
        W, b = classifier, None
    W = to_numpy(W, dtype=np.float64, what="classifier W")
    if W.ndim != 2 or W.shape[1] != d:
        raise ValueError(
            f"classifier W has shape {W.shape}; it must be (K, d) with d = {d}, the dimension of "
            "the features it classifies (the last layer)."
        )
    _check_finite(W, "classifier W contains")
    if b is not None:
        b = to_numpy(b, dtype=np.float64, what="classifier bias").reshape(-1)
        if b.shape[0] != W.shape[0]:
            raise ValueError(f"classifier bias has length {b.shape[0]}; W has {W.shape[0]} rows.")
        _check_finite(b, "classifier bias contains")
    return W, b


def _check_label_range(labels: np.ndarray, n_out: int, what: str) -> None:
    bad = (labels < 0) | (labels >= n_out)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} labels lie outside 0..{n_out - 1}, the classes of the {what} "
            f"(found labels {np.unique(labels[bad])[:10].tolist()}); label class k by the index of "
            f"its row in the {what}, or drop those samples."
        )


def _check_head(
    raw: np.ndarray, d: int, n: int, classifier: Any, logits: ArrayLike | None
) -> tuple[Head | None, np.ndarray | None]:
    """The checked classifier ``(W, b)`` and logits (each None when not given)."""
    head = None
    if classifier is not None:
        head = _check_classifier(classifier, d)
        _check_label_range(raw, head[0].shape[0], "classifier")
    lg = None
    if logits is not None:
        lg = to_numpy(logits, dtype=np.float64, what="logits")
        if lg.ndim != 2 or lg.shape[0] != n:
            raise ValueError(f"logits have shape {lg.shape}; they must be (n, K) with n = {n}.")
        _check_finite(lg, "logits contain")
        _check_label_range(raw, lg.shape[1], "logits")
    return head, lg


def _block_size(block_size: int | None, dim: int) -> int:
    """Rows per block: the given number, else ``SCAN_ROWS`` capped at one block of the transport
    geometry's size in float64 (wide layers get fewer rows per block)."""
    if block_size is None:
        return min(_utils.SCAN_ROWS, rows_per_block(dim, 8))
    return check_int(block_size, "block_size (rows per block)", minimum=1)


def _check_rtol(rtol: float) -> float:
    return check_real(
        rtol, "rtol (the relative eigenvalue cutoff)", minimum=0.0, maximum=1.0, open_max=True
    )


def _prepare(
    features: ArrayLike, labels: ArrayLike, weights: ArrayLike | None
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked features, raw labels, class labels, class index and mass per sample.

    The masses follow otcollapse's one weight rule (:func:`otcollapse._validation.check_weights`):
    they sum to one, so every statistic below is a weighted mean without further normalisation.
    """
    x = _check_features(features)
    n = int(x.shape[0])
    raw = check_labels(labels, n)
    w = check_weights(weights, n, "weights")
    classes = np.unique(raw[w > 0])
    if classes.shape[0] < 2:
        raise ValueError(
            f"collapse metrics compare classes, so they need K >= 2 classes; the labels hold "
            f"{classes.shape[0]} class(es) with positive weight ({classes.tolist()}). Give samples "
            "of at least two classes."
        )
    idx = np.searchsorted(classes, raw)
    idx = np.clip(idx, 0, classes.shape[0] - 1)
    w = np.where(classes[idx] == raw, w, 0.0)  # zero-weight samples of absent classes
    return x, raw, classes, idx, w


# ---------------------------------------------------------------------------------------------
# streaming class statistics
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ClassStatistics(Result):
    r"""Class statistics of one layer, streamed in float64 (see :func:`class_statistics`).

    Attributes
    ----------
    classes : ndarray of int, shape (K,)
        The labels of the classes, sorted (classes with positive mass only).
    counts : ndarray of int, shape (K,)
        Samples of positive weight per class.
    masses : ndarray, shape (K,)
        Class masses $p_k = \sum_{y_i=k} a_i$ (sum to one; ``n_k / N`` when uniform).
    means : ndarray, shape (K, d)
        Class means $m_k$.
    within_ss : ndarray, shape (K,)
        $\sum_{y_i=k} a_i \lVert h_i - m_k\rVert^2$; their sum is $\operatorname{Tr}\Sigma_W$.
    basis : ndarray, shape (d, r), r = min(K, d)
        Orthonormal basis $U$ of a space holding every centred class mean (right singular
        vectors of the centred means), ordered by decreasing between-class eigenvalue.
    between_eigvals : ndarray, shape (r,)
        $\Sigma_B = U \operatorname{diag}(\lambda) U^\top$: the eigenvalues $\lambda$ (descending).
    within_proj : ndarray, shape (r, r), or None
        $U^\top \Sigma_W U$ (None when the second pass was not run).
    """

    _derived: ClassVar[tuple[str, ...]] = ("n_classes", "dim", "tr_sigma_w", "tr_sigma_b")

    classes: np.ndarray
    counts: np.ndarray
    masses: np.ndarray
    means: np.ndarray
    within_ss: np.ndarray
    basis: np.ndarray
    between_eigvals: np.ndarray
    within_proj: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return int(self.classes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def global_mean(self) -> np.ndarray:
        """$m_G$: the unweighted mean of the class means."""
        return self.means.mean(axis=0)

    @property
    def centred_means(self) -> np.ndarray:
        """$m_k - m_G$ as rows, shape (K, d)."""
        return self.means - self.global_mean

    @property
    def mean_coords(self) -> np.ndarray:
        """Coordinates of the centred class means in :attr:`basis`, shape (K, r)."""
        return self.centred_means @ self.basis

    @property
    def class_variances(self) -> np.ndarray:
        r"""$V_k = \frac1{p_k}\sum_{y_i=k} a_i\lVert h_i - m_k\rVert^2$ (``1/n_k`` when uniform)."""
        return self.within_ss / self.masses

    @property
    def tr_sigma_w(self) -> float:
        return float(self.within_ss.sum())

    @property
    def tr_sigma_b(self) -> float:
        return float((self.centred_means**2).sum() / self.n_classes)

    def kept(self, rtol: float = DEFAULT_RTOL) -> np.ndarray:
        r"""Mask of the eigenvalues of $\Sigma_B$ kept by the pseudo-inverse (``> rtol * max``)."""
        lam = self.between_eigvals
        top = float(lam.max()) if lam.size else 0.0
        return (lam > rtol * top) & (lam > 0)


@dataclasses.dataclass(frozen=True)
class _Pass2:
    within_proj: np.ndarray  # U^T Sigma_W U
    ncc_pred: np.ndarray | None  # class index per sample
    head_pred: np.ndarray | None  # classifier row per sample
    coords: np.ndarray | None  # U^T (h_i - m_G), rows
    resid_ss: float  # sum_i a_i ||(h_i - m_G) - U U^T (h_i - m_G)||^2


def _blocks(
    x: Any, lab: np.ndarray, w: np.ndarray, block: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(rows as float64, their class indices, their masses)`` block by block."""
    start = 0
    for blk in iter_rows(x, block):
        b = to_numpy(blk, dtype=np.float64)
        stop = start + b.shape[0]
        yield b, lab[start:stop], w[start:stop]
        start = stop


def _pass1(
    x: Any, lab: np.ndarray, w: np.ndarray, K: int, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class masses, means and centred sums of squares, merged block by block (Chan et al.)."""
    d = int(x.shape[1])
    mass = np.zeros(K)
    mean = np.zeros((K, d))
    ss = np.zeros(K)
    n_nan = n_inf = 0
    for b, lb, wb in _blocks(x, lab, w, block):
        finite = np.isfinite(b)
        if not finite.all():  # count them all before refusing, so the message gives the totals
            n_nan += int(np.isnan(b).sum())
            n_inf += int((~finite).sum()) - int(np.isnan(b).sum())
            continue
        m_b = np.bincount(lb, weights=wb, minlength=K)
        onehot = np.zeros((b.shape[0], K))
        onehot[np.arange(b.shape[0]), lb] = wb
        present = m_b > 0
        mean_b = np.zeros((K, d))
        mean_b[present] = (onehot.T @ b)[present] / m_b[present, None]
        dev = b - mean_b[lb]
        ss_b = np.bincount(lb, weights=wb * np.einsum("ij,ij->i", dev, dev), minlength=K)
        # merge the block's centred statistics into the running ones
        tot = mass + m_b
        delta = mean_b - mean
        frac = np.divide(m_b, tot, out=np.zeros(K), where=tot > 0)
        mean[present] += delta[present] * frac[present, None]
        ss += ss_b + np.einsum("kd,kd->k", delta, delta) * mass * frac
        mass = tot
    if n_nan or n_inf:
        raise ValueError(
            f"features contain {n_nan} NaN and {n_inf} infinite values; "
            "remove or impute those samples before measuring collapse."
        )
    return mass, mean, ss


def _pass2(
    x: Any,
    lab: np.ndarray,
    w: np.ndarray,
    means: np.ndarray,
    basis: np.ndarray,
    block: int,
    *,
    ncc: bool,
    head: Head | None,
    keep_coords: bool,
) -> _Pass2:
    """Projected within-class scatter, nearest-centre and classifier predictions, OT coordinates."""
    r = basis.shape[1]
    coords_means = (means - means.mean(axis=0)) @ basis  # (K, r)
    cm_sq = np.einsum("kr,kr->k", coords_means, coords_means)
    within = np.zeros((r, r))
    resid = 0.0
    ncc_pred, head_pred, coords = [], [], []
    for b, lb, wb in _blocks(x, lab, w, block):
        dev = b - means[lb]
        p = dev @ basis  # U^T (h - m_y)
        within += (p * wb[:, None]).T @ p
        z = p + coords_means[lb]  # U^T (h - m_G): m_y - m_G lies in span U
        if ncc:
            d2 = np.einsum("ir,ir->i", z, z)[:, None] - 2.0 * z @ coords_means.T + cm_sq[None]
            ncc_pred.append(np.argmin(d2, axis=1))
        if head is not None:
            W, bias = head
            logits = b @ W.T if bias is None else b @ W.T + bias
            head_pred.append(np.argmax(logits, axis=1))
        if keep_coords:
            coords.append(z)
            res = dev - p @ basis.T  # the part of h - m_G orthogonal to span U
            resid += float(wb @ np.einsum("ij,ij->i", res, res))
    return _Pass2(
        within_proj=within,
        ncc_pred=np.concatenate(ncc_pred) if ncc else None,
        head_pred=np.concatenate(head_pred) if head is not None else None,
        coords=np.concatenate(coords) if keep_coords else None,
        resid_ss=resid,
    )


def _statistics(
    x: Any, classes: np.ndarray, idx: np.ndarray, w: np.ndarray, block: int
) -> ClassStatistics:
    """Pass 1 and the eigendecomposition of Sigma_B (``w``: masses summing to one)."""
    K = classes.shape[0]
    mass, means, ss = _pass1(x, idx, w, K, block)
    centred = means - means.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    counts = np.bincount(idx[w > 0], minlength=K)
    return ClassStatistics(
        classes=classes,
        counts=counts,
        masses=mass,
        means=means,
        within_ss=ss,
        basis=vt.T.copy(),
        between_eigvals=s**2 / K,
    )


def class_statistics(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    block_size: int | None = None,
) -> ClassStatistics:
    r"""Class masses, means, within-class traces and the projected within-class scatter, streamed.

    Pass 1 merges per-block centred statistics (Chan, Golub & LeVeque's pairwise update):

    $$m \leftarrow m + \delta\,\frac{w_b}{w + w_b},\qquad
      SS \leftarrow SS + SS_b + \lVert\delta\rVert^2 \frac{w\,w_b}{w + w_b},\qquad
      \delta = m_b - m,$$

    per class. Pass 2 accumulates $U^\top \Sigma_W U$ with $U$ (d, min(K, d)) an orthonormal
    basis of the span of the centred class means, so no ``d x d`` matrix is formed. Features are
    read in blocks of ``block_size`` rows (a memory map is never read whole) and converted to
    float64.

    Parameters
    ----------
    features : array-like, memmap or Tensor, shape (n, d)
    labels : array-like of int, shape (n,)
    weights : array-like, shape (n,), optional
        Sample masses $a_i$: finite, non-negative, summing to one (within 1e-6); uniform
        ``1/n`` when omitted.
    block_size : int, optional
        Rows per block; defaults to ``otcollapse._utils.SCAN_ROWS`` rows, fewer for wide layers
        (at most about 64 MiB of float64 per block).

    Returns
    -------
    ClassStatistics

    Examples
    --------
    >>> import numpy as np
    >>> st = class_statistics(np.array([[0.0], [2.0], [3.0], [5.0]]), [0, 0, 1, 1])
    >>> st.means.ravel().tolist(), st.tr_sigma_w, st.tr_sigma_b
    ([1.0, 4.0], 1.0, 2.25)
    """
    x, _, classes, idx, w = _prepare(features, labels, weights)
    block = _block_size(block_size, int(x.shape[1]))
    st = _statistics(x, classes, idx, w, block)
    p2 = _pass2(x, idx, w, st.means, st.basis, block, ncc=False, head=None, keep_coords=False)
    return dataclasses.replace(st, within_proj=p2.within_proj)
