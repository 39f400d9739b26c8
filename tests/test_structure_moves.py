"""The search's structural moves: whole residual blocks dropped and layers factorized (low rank), taken
where they win over channel pruning (its own file: a long search, run beside the transformer tests by
pytest-xdist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.search.loop import SearchRequest, search
from tests.test_transformers import SEARCH


@pytest.mark.slow
def test_layer_dropping_and_low_rank_moves_win_where_they_should(tmp_path):
    """tests/structure_models.py: a residual block that adds almost nothing and a rank-16 wide layer. Both
    moves are in the space, and the walk takes them over channel pruning (nearly free, most of the work)."""
    # judged on the cost model of a board that is not here (tests/targets/rpi5-fp32.yaml): which moves win is
    # the question, and the answer must not follow this machine's load (timed under the suite's other worker,
    # a calibration skewed by load walked past the budget into lossy cuts); measured searches: test_transformers
    result = search(SearchRequest(model="tests.structure_models:redundant", data="tests.structure_models:redundant_data",
                                  out=tmp_path, **{**SEARCH, "max_accuracy_drop": 1.0, "target": "rpi5-fp32"})).as_dict()
    space = json.loads((tmp_path / "space.json").read_text())
    assert space["droppable"] == ["blocks.0", "blocks.1"] and "wide" in space["lowrank"] and "head" not in space["lowrank"]
    moves = result["chosen"]["moves"]
    assert {"block": "blocks.1", "kind": "drop"} in moves, moves
    assert any(m["kind"] == "rank" and m["layer"] == "wide" and m["rank"] >= 16 for m in moves), moves
    # met on the prediction; rpi5-fp32 has no published anchors, so its prediction has no bound: uncertain (issue 15)
    assert result["budget"]["judged_on"] == "predicted" and result["budget"]["verdict"] == "uncertain"
    assert result["budget"]["latency"]["value"] <= result["budget"]["latency_ms"]
    assert result["accuracy"]["test_drop_pt"] <= 1.0
    built = json.loads((Path(result["chosen"]["run_dir"]) / "report.json").read_text())
    assert built["status"].startswith("built; latency predicted") and "accuracy checked here" in built["status"]
