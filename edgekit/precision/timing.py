"""How the precision steps build and time their engines: one value the sensitivity analysis,
accuracy-aware int8 and the mixed plan's never-slower rule share."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.backends.base import Backend
from edgekit.profile import ProfileSettings
from edgekit.targets import Target


@dataclass(frozen=True)
class Timing:
    """How every step's engine is built and timed: the target's runtime, side by side with float on `feed`."""

    target: Target
    backend: Backend
    threads: int
    feed: dict
    settings: ProfileSettings
