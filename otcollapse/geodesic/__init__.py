r"""Wasserstein-geodesic analysis of a layer trajectory.

Does the forward pass of a residual network move the distribution of features along a Wasserstein
geodesic — straight, at constant speed, by an optimal map? This package measures it on a
:class:`~otcollapse.measures.Trajectory` (one empirical measure per layer over the same samples):

- :func:`transport_profile` (``profile``) — W2 between layers, the paired (kinetic) cost of the
  network's own coupling, the block efficiency, a split-half noise floor and the record of every
  solve;
- :func:`geodesic_test` (``straightness``) — per segment of equal dimension: path ratio, speed
  variation, McCann fit, optimal transport score (OTS) and line-shape score (LSS), with
  subsampling intervals on request;
- :func:`compare_trajectories` (``compare``) — two trajectories over the same samples, layer by
  layer;
- the scores on their own: :func:`ots`, :func:`lss` (``scores``), :func:`mccann_interpolate`
  (``mccann``), :func:`split_half_floor` (``profile``);
- :func:`align_trajectory` (``gauge``) — successive layers in one basis (orthogonal Procrustes,
  or whitening then Procrustes) before they are compared: every analysis above takes
  ``gauge="none" | "orthogonal" | "affine"``;
- the result types (``results``).

Every W2 goes through one :class:`otcollapse.transport.TransportSpec` per call, checked once;
conventions (full squared cost, sample masses ``a_i``, uniform ``1/n`` by default) are those of
the transport convention in the documentation's Concepts page.

References
----------
Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
McCann, "A convexity principle for interacting gases", Adv. Math. 128 (1997).
"""

from otcollapse.geodesic.compare import compare_trajectories
from otcollapse.geodesic.gauge import GAUGES, GaugeAlignment, align_trajectory, procrustes
from otcollapse.geodesic.mccann import mccann_interpolate
from otcollapse.geodesic.profile import split_half_floor, transport_profile
from otcollapse.geodesic.results import (
    GeodesicReport,
    LayerComparison,
    LSSResult,
    McCannFit,
    SegmentReport,
    TrajectoryComparison,
    TransportPair,
    TransportProfile,
)
from otcollapse.geodesic.scores import lss, ots
from otcollapse.geodesic.straightness import geodesic_test

__all__ = [
    "GAUGES",
    "GaugeAlignment",
    "GeodesicReport",
    "LSSResult",
    "LayerComparison",
    "McCannFit",
    "SegmentReport",
    "TrajectoryComparison",
    "TransportPair",
    "TransportProfile",
    "align_trajectory",
    "compare_trajectories",
    "geodesic_test",
    "lss",
    "mccann_interpolate",
    "ots",
    "procrustes",
    "split_half_floor",
    "transport_profile",
]
