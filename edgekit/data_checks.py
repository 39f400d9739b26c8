"""Data that cannot say anything: caught before calibration and measurement.

Int8 scales are ranges observed on the data, and accuracy is agreement on it. Samples that are all
the same (all zeros, one image repeated) give scales that fit nothing real and an accuracy of 100 %
that means nothing: an error. Data that is merely weak (an input that never varies, mostly repeated
samples, a calibration set too small for its method) gives a warning in the report. Values a dtype
cannot hold are an error before they are cast.
"""

from __future__ import annotations

import hashlib

import numpy as np

from edgekit.errors import BadInput

NEAR_CONSTANT = 1e-6  # spread below this fraction of the values' magnitude: the data does not vary
MOSTLY_DUPLICATES = 0.5  # fewer distinct samples than this fraction: warn


def check_range(array: np.ndarray, dtype: np.dtype, name: str, source: str) -> None:
    """Values the input's dtype cannot hold would wrap or overflow when cast: say which and where."""
    if array.size == 0 or array.dtype == dtype:
        return
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise BadInput(f"data {source}: input '{name}' is {dtype} but the data holds values in [{low:g}, {high:g}], "
                           f"outside {dtype}'s [{info.min}, {info.max}]")
    elif dtype.kind == "f" and array.dtype.kind in "fiu":
        largest = float(np.abs(array).max())
        if largest > float(np.finfo(dtype).max):
            raise BadInput(f"data {source}: input '{name}' is {dtype} but the data holds {largest:g}, "
                           f"beyond {dtype}'s largest value {float(np.finfo(dtype).max):g}")


def _spread(array: np.ndarray) -> tuple[float, float]:
    """(max - min, the values' magnitude) of an input over every sample."""
    low, high = float(array.min()), float(array.max())  # no float64 copy of the whole data set
    return high - low, max(abs(low), abs(high), 1.0)


def check_samples(inputs: dict[str, np.ndarray], source: str) -> tuple[str, ...]:
    """Raise BadInput when nothing in the data varies; return one-line warnings for weak data."""
    n = len(next(iter(inputs.values())))
    warnings: list[str] = []
    still = []
    for name, array in inputs.items():
        spread, magnitude = _spread(array)
        if spread == 0:
            still.append(name)
            if array.dtype.kind == "f":
                warnings.append(f"input '{name}' is {float(array.flat[0]):g} in every sample: its int8 range says nothing "
                                "about real inputs")
        elif spread <= NEAR_CONSTANT * magnitude:
            still.append(name)
            warnings.append(f"input '{name}' varies by only {spread:.3g} across the data (near-constant)")
    if len(still) == len(inputs):
        raise BadInput(f"data {source}: nothing varies: {', '.join(repr(s) for s in still)} "
                       f"{'is' if len(still) == 1 else 'are'} (nearly) the same in all {n} samples, so int8 scales "
                       "and accuracy measured on it mean nothing; give representative inputs")
    distinct = _distinct(inputs)
    if distinct == 1:
        raise BadInput(f"data {source}: all {n} samples are the same sample, so int8 scales and accuracy measured on "
                       "it mean nothing; give representative inputs")
    if distinct < MOSTLY_DUPLICATES * n:
        warnings.append(f"only {distinct} of the {n} samples are distinct: calibration and accuracy rest on {distinct}")
    return tuple(f"data {source}: {w}" for w in warnings)


def _distinct(inputs: dict[str, np.ndarray]) -> int:
    """How many samples differ in at least one input (hashing each sample's bytes)."""
    n = len(next(iter(inputs.values())))
    digests = set()
    for i in range(n):
        digest = hashlib.blake2b(digest_size=16)
        for key in sorted(inputs):
            digest.update(np.ascontiguousarray(inputs[key][i]).tobytes())
        digests.add(digest.digest())
    return len(digests)
