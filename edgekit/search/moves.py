"""The walk's structural moves beside channel pruning (edgekit.search.greedy.Move): whole blocks dropped
(edgekit.compress.drop) and layers factorized to a lower rank (edgekit.compress.lowrank); and how a
chosen candidate's moves read in search.json."""

from __future__ import annotations

import dataclasses

from edgekit.compress.drop import drop_blocks
from edgekit.compress.lowrank import factorize
from edgekit.search import greedy

MOVES = ("prune", "drop", "rank")  # channels/heads/FFN widths, whole blocks, low-rank layers (the greedy walk)


def chosen_moves(space, candidate: dict) -> list[dict]:
    """The chosen candidate's structural moves, by kind: attention heads, FFN (Linear) widths, channels."""
    moves = []
    for group in space.groups:
        kept = candidate["keep"].get(group.name, group.channels)
        if kept < group.channels:
            move = {"group": group.name, "kind": group.kind, "from": group.channels, "to": kept}
            if group.heads:
                move["heads"] = {"from": group.heads, "to": kept // group.unit}
            moves.append(move)
    moves += [{"block": block, "kind": "drop"} for block in candidate.get("drop", [])]
    moves += [{"layer": layer, "kind": "rank", "rank": rank} for layer, rank in candidate.get("rank", {}).items()]
    return moves


def structure_moves(space, allowed=MOVES) -> tuple:
    """The walk's moves beside channel pruning: each droppable block, each factorizable layer's rank ladder."""
    def dropped(candidate, name: str) -> bool:
        return any(name == b or name.startswith(b + ".") for b in candidate.drop)

    def ranks(layer: str):
        """One rung down the ladder per step, each about half the cost of the last (a rank costs
        r·(in+out) MACs per position; the ladder ends where the pair costs what the layer did), so a
        step prices one export per factorizable layer, not a bisection over dozens of ranks."""
        ladder = space.lowrank[layer]

        def below(c):
            current = c.rank.get(layer)
            if dropped(c, layer) or current == ladder[0]:
                return []
            top = ladder[-1] if current is None else current
            half = [r for r in ladder if r <= top // 2] or [ladder[0]]
            return [half[-1]] if current is None or half[-1] < current else []
        return below

    moves = [greedy.Move("drop", block, lambda c, b=block: [] if dropped(c, b) else [0],
                         lambda c, _, b=block: dataclasses.replace(c, drop=(*c.drop, b)),
                         lambda m, _, b=block: drop_blocks(m, [b])) for block in space.droppable if "drop" in allowed]
    moves += [] if "rank" not in allowed else [greedy.Move("rank", layer, ranks(layer), lambda c, r, n=layer: dataclasses.replace(c, rank={**c.rank, n: r}),
                          lambda m, r, n=layer: factorize(m, {n: r})) for layer in space.lowrank]
    return tuple(moves)
