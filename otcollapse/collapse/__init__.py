r"""Neural-collapse metrics per layer and progressive-feedforward-collapse (PFC) statistics.

One convention for every metric (DESIGN.md, section 1). Samples ``h_i`` with labels ``y_i`` and
masses ``a_i`` (``a_i = 1/N`` unless weights are given; weights follow otcollapse's one rule:
finite, non-negative, summing to one); class masses ``p_k = sum_{y_i=k} a_i`` (``n_k/N`` when
uniform); class means ``m_k``; the global mean is the *unweighted* mean of the class means,

$$m_G = \frac1K \sum_{k=1}^K m_k,\qquad
  \Sigma_W = \sum_i a_i\,(h_i - m_{y_i})(h_i - m_{y_i})^\top,\qquad
  \Sigma_B = \frac1K \sum_{k=1}^K (m_k - m_G)(m_k - m_G)^\top .$$

With uniform masses ``Sigma_W = (1/N) sum_i (h_i - m_{y_i})(h_i - m_{y_i})^T``. The rooms:

* :mod:`~otcollapse.collapse.statistics` — class statistics streamed over row blocks in float64
  (two passes; a memory map is never read whole; no ``d x d`` matrix is formed, since
  $\Sigma_B$ lives in the span of the centred class means and
  $\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$ needs only the ``min(K, d)``-dimensional
  projection of $\Sigma_W$ onto that span), and the input checks;
* :mod:`~otcollapse.collapse.metrics` — one function per metric in a name -> function registry
  (:data:`METRICS`, in table order: NC1, He–Su's $D$, $\widetilde{\mathrm{NC1}}$, CDNV, NC2,
  NC3, NC4, the traces and the OT view $W_2^2(\mu, \sum_k p_k \delta_{m_k}) \le
  \operatorname{Tr}\Sigma_W$), :class:`LayerCollapse` and :func:`layer_collapse`;
* :mod:`~otcollapse.collapse.plain` — the plain per-metric functions (:func:`nc1`, :func:`cdnv`,
  ...: one value per call, and a ValueError that says why where the metric is undefined);
* :mod:`~otcollapse.collapse.profile` — :func:`collapse_profile` over depth, with the PFC
  statistics and the geometric decay of $D$.

:func:`layer_collapse` and :func:`collapse_profile` report an undefined metric as NaN and say
why in ``notes``. Within-class scatter at rounding level (every
sample on its class mean up to a few ulps, see :data:`COLLAPSE_ULPS`) is set to exactly zero and
flagged ``collapsed``.

References
----------
The metric papers (Papyan, Han & Donoho; Tirer, Huang & Niles-Weed; Galanti, György & Hutter; He &
Su) are cited in full in :mod:`~otcollapse.collapse.metrics`, the PFC paper (Wang, Gai & Zhang)
in :mod:`~otcollapse.collapse.profile`, the streaming merge (Chan, Golub & LeVeque) in
:mod:`~otcollapse.collapse.statistics`.
"""

from __future__ import annotations

from otcollapse.collapse.metrics import COLLAPSE_ULPS, METRICS, LayerCollapse, layer_collapse
from otcollapse.collapse.plain import (
    cdnv,
    cdnv_matrix,
    nc1,
    nc1_tilde,
    nc2,
    nc3,
    nc4,
    separation_fuzziness,
    w2sq_to_class_means,
)
from otcollapse.collapse.profile import (
    MONOTONE_RTOL,
    CollapseProfile,
    DecayFit,
    PFCStatistic,
    collapse_profile,
)
from otcollapse.collapse.statistics import DEFAULT_RTOL, ClassStatistics, class_statistics

__all__ = [
    "COLLAPSE_ULPS",
    "DEFAULT_RTOL",
    "METRICS",
    "MONOTONE_RTOL",
    "ClassStatistics",
    "CollapseProfile",
    "DecayFit",
    "LayerCollapse",
    "PFCStatistic",
    "cdnv",
    "cdnv_matrix",
    "class_statistics",
    "collapse_profile",
    "layer_collapse",
    "nc1",
    "nc1_tilde",
    "nc2",
    "nc3",
    "nc4",
    "separation_fuzziness",
    "w2sq_to_class_means",
]
