"""Fit every target's anchored latency model on its published reference latencies (edgekit.anchored, issue 15).

Exports each reference architecture the anchors name once (about a minute in all), fits each target, and writes
targets/fitted/<target>.json: the parameters, the anchors used (with their roofline features and fitted value)
and those skipped with why, the leave-one-out errors, their median and the interval factor. A target without
usable anchors gets no file (its predictions are the bare roofline, labelled so). tests/test_anchored.py checks
that the committed files are the fit of the targets as they are now.

    .venv/bin/python bench/fit_anchors.py [--out targets/fitted]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgekit import anchored
from edgekit.reference_models import reference_table
from edgekit.targets import list_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=anchored.fitted_dir())
    args = parser.parse_args()
    targets = list_targets()
    keys = {(r.model, r.input) for t in targets for r, _, _ in anchored.select(t)[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tables = {key: reference_table(key[0], Path(tmp) / f"{key[0]}-{key[1]}", key[1]) for key in sorted(keys)}
    written = set()
    for target in targets:
        fit = anchored.fit_target(target, tables)
        if fit is None:
            print(f"{target.name:18s} no usable anchors: the bare roofline, no bound")
            continue
        written.add(anchored.save(fit, args.out).name)
        loo = ", ".join(f"{e:+.0%}" for e in fit.loo_errors) or "-"
        print(f"{target.name:18s} {len(fit.anchors)} anchors ({len(fit.skipped)} skipped), "
              f"{anchored.describe(fit)}; LOO {loo}")
    for stale in args.out.glob("*.json"):
        if stale.name not in written:
            stale.unlink()


if __name__ == "__main__":
    main()
