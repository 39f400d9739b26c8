"""Metrics a user might write (`--metric tests.user_metrics:NAME`), and two broken ones, for the tests."""

from __future__ import annotations

import numpy as np


def margin_agreement(outputs, labels, reference):
    """Top-1 agreement with the source model, counted only where the source is sure (margin > 0.1)."""
    ours, ref = np.asarray(outputs[0]), np.asarray(reference[0])
    top2 = np.sort(ref, axis=-1)[:, -2:]
    sure = (top2[:, 1] - top2[:, 0]) > 0.1
    if not sure.any():
        return 1.0
    return float((ours.argmax(-1) == ref.argmax(-1))[sure].mean())


margin_agreement.unit = "agreement where the source is sure (fraction)"
margin_agreement.points = 100.0


def raises(outputs, labels, reference):
    raise ValueError("this metric is broken on purpose")


def nan(outputs, labels, reference):
    return float("nan")
