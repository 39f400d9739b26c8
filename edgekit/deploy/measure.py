"""`measure`: the second half of a deploy — the built engine timed by a `Measurer` (here, or on a device
through its agent), its accuracy checked, the budget judged, report.json written. A whole model measured on a
device joins its target's latency fit (edgekit.device_latencies)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from edgekit import anchored, device_latencies, graph, remote
from edgekit.backends.base import Artifact
from edgekit.budget import judge_latency
from edgekit.deploy.build import Build
from edgekit.deploy.result import DeployReport
from edgekit.errors import EdgekitError
from edgekit.measurer import Measurement, Measurer, ProfileAsk
from edgekit.models import LoadedModel
from edgekit.profile import AccuracyCheck, accuracy


def measure(built: Build, measurer: Measurer, step: Callable[[str], None] = lambda _: None, *,
            beside: tuple[str, Artifact] | None = None, original: LoadedModel | None = None) -> DeployReport:
    """Time the engine where `measurer` times (else leave the prediction, labelled so), check its accuracy,
    judge the budget; the report, written. `beside`: an engine (its name, its build) to time it side by
    side with; `original`: the model the test metric compares with (else the model built: a pruned model
    compared with itself would hide what pruning cost, for metrics such as cosine that need no labels)."""
    availability, splits = built.availability, built.splits
    if built.artifact is None:
        return built.finish()
    reference = original or built.model
    report = built.report()
    if not built.request.measure:
        pass
    elif measurer.can_time(built.target, availability):
        step("profile")
        try:
            measured = measurer.profile(_ask(built, reference, beside))
        except EdgekitError:
            built.finish()
            raise
        report = _with_measurement(report, measured)
        if measured.device is not None and measured.latency.get("p50"):
            _remember(built, measured)
        if measured.accuracy is None and splits is not None and (availability.run or availability.check):
            step("check")
            where = f"this machine, the same engine with {built.backend.name}" if availability.run else availability.check_how
            report = dataclasses.replace(report, checked_here=_checked_here(built, reference, where))
    elif availability.check and splits is not None:
        step("check")  # the device is not here, but its model's arithmetic is: accuracy, latency predicted
        report = dataclasses.replace(report, checked_here=_checked_here(built, reference, availability.check_how),
                                     status=f"{report.status}; accuracy checked here ({availability.check_how})")
    step("report")
    return built.finish(_judged(report))


def _ask(built: Build, reference: LoadedModel, beside: tuple[str, Artifact] | None) -> ProfileAsk:
    splits = built.splits
    check = AccuracyCheck(splits.test, functools.partial(graph.reference_outputs, reference), built.metric) if splits else None
    return ProfileAsk(backend=built.backend, artifact=built.artifact, target=built.target, feed=built.feed,
                      settings=built.request.settings, source=remote.DeviceBuild(built.build_from, built.plan, built.run_dir),
                      planned=built.precision["planned"], check=check, beside=beside, times=built.times)


def _with_measurement(report: DeployReport, measured: Measurement) -> DeployReport:
    mixed = report.mixed
    if mixed is not None and mixed.fp32_p50_ms is None:  # every layer stayed float: this engine is the fp32 one
        mixed = dataclasses.replace(mixed, fp32_p50_ms=measured.latency["p50"])
    return dataclasses.replace(report, latency_ms=measured.latency, status=measured.status, measurement=measured, mixed=mixed,
                               cost_model_error=round(report.predicted_latency_ms["p50"] / measured.latency["p50"] - 1, 3))


def _remember(built: Build, measured: Measurement) -> None:
    """The device's measurement of the whole model, kept with its features for its target's fit."""
    plan = built.plan
    device_latencies.record(measured.device["name"], built.target, model=built.model.name, precision=plan.label,
                            features=anchored.features(built.layers, built.target, plan.default, plan.layers),
                            ms=measured.latency["p50"])


def _checked_here(built: Build, model: LoadedModel, where: str) -> dict:
    """The engine's accuracy on the test split, run on this machine (`where` says how that stands for the device)."""
    engine = built.backend.load(built.artifact, target=built.target, threads=built.threads)
    checked = accuracy(engine, built.splits.test, functools.partial(graph.reference_outputs, model), built.metric)
    return {**checked.as_dict(), "where": where}


def _judged(report: DeployReport) -> DeployReport:
    if report.budget is None:
        return report
    verdict = judge_latency("latency_ms", report.budget["latency_ms"], report.latency_ms)
    return dataclasses.replace(report, budget={**report.budget, "met": verdict.met, "verdict": verdict.verdict,
                                               "judged_on": verdict.kind})
