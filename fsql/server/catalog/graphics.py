"""Geometry of the catalog's SVG pictures, computed here and drawn by the templates (which escape every
label): a histogram per numeric feature and a layered lineage graph."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # "[low, high): count", shown as the bar's tooltip


@dataclass(frozen=True)
class Histogram:
    width: int
    height: int
    bars: list[Bar]
    low: str
    high: str
    peak: int


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def histogram(stats: dict[str, Any], width: int = 320, height: int = 96) -> Histogram | None:
    data = stats.get("histogram")
    if not data or not data.get("counts"):
        return None
    counts: list[int] = data["counts"]
    edges: list[float] = data["edges"]
    peak = max(counts) or 1
    step = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = (height - 4) * count / peak
        closing = "]" if i == len(counts) - 1 else ")"
        bars.append(Bar(round(i * step + 1, 2), round(height - h, 2), round(max(step - 2, 1), 2), round(h, 2),
                        f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{closing}: {count:,}"))
    return Histogram(width, height, bars, _fmt(edges[0]), _fmt(edges[-1]), peak)


NodeKey = tuple[str, str, str | None]  # (kind, relation, column)


@dataclass
class Node:
    key: NodeKey
    layer: int
    x: float = 0
    y: float = 0
    href: str | None = None
    focus: bool = False

    @property
    def kind(self) -> str:
        return self.key[0]

    @property
    def relation(self) -> str:
        return self.key[1]

    @property
    def column(self) -> str | None:
        return self.key[2]


@dataclass(frozen=True)
class Edge:
    path: str  # SVG path data (numbers only)


@dataclass
class Graph:
    width: int
    height: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # a caption per column
    node_width: int = 0
    node_height: int = 0


NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 200, 40, 56, 12, 24
_LAYER_LABEL = {"source": "source columns", "view": "views", "training_set": "training sets", "model": "models"}


def lineage_graph(edges: Iterable[tuple[NodeKey, NodeKey]], focus: Sequence[NodeKey],
                  link: Any = None) -> Graph | None:
    """Left-to-right layers: every edge goes from an upstream node to a downstream one. Each node sits one
    layer right of its deepest upstream node, so sources come first and models last."""
    pairs = list(dict.fromkeys(edges))
    if not pairs:
        return None
    ups: dict[NodeKey, set[NodeKey]] = {}
    for up, down in pairs:
        ups.setdefault(down, set()).add(up)
        ups.setdefault(up, set())
    layer: dict[NodeKey, int] = {}

    def depth(node: NodeKey, trail: frozenset[NodeKey] = frozenset()) -> int:
        if node in layer:
            return layer[node]
        parents = [p for p in ups[node] if p not in trail]
        value = 0 if not parents else 1 + max(depth(p, trail | {node}) for p in parents)
        layer[node] = value
        return value

    for node in ups:
        depth(node)
    columns: dict[int, list[NodeKey]] = {}
    for node, index in layer.items():
        columns.setdefault(index, []).append(node)
    order = {"source": 0, "view": 1, "training_set": 2, "model": 3}
    graph = Graph(0, 0, node_width=NODE_W, node_height=NODE_H)
    placed: dict[NodeKey, Node] = {}
    tallest = max(len(v) for v in columns.values())
    for index in sorted(columns):
        keys = sorted(columns[index], key=lambda k: (order.get(k[0], 9), k[1], k[2] or ""))
        offset = (tallest - len(keys)) * (NODE_H + GAP_Y) / 2
        kinds = sorted({k[0] for k in keys}, key=lambda k: order.get(k, 9))
        graph.layers.append(" + ".join(_LAYER_LABEL.get(k, k) for k in kinds))
        for row, key in enumerate(keys):
            node = Node(key, index, PAD + index * (NODE_W + GAP_X), PAD + 18 + offset + row * (NODE_H + GAP_Y),
                        href=link(key) if link else None, focus=key in focus)
            placed[key] = node
            graph.nodes.append(node)
    for up, down in pairs:
        a, b = placed[up], placed[down]
        x1, y1 = a.x + NODE_W, a.y + NODE_H / 2
        x2, y2 = b.x, b.y + NODE_H / 2
        mid = (x1 + x2) / 2
        graph.edges.append(Edge(f"M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"))
    graph.width = int(PAD * 2 + len(columns) * NODE_W + (len(columns) - 1) * GAP_X)
    graph.height = int(PAD * 2 + 18 + tallest * NODE_H + (tallest - 1) * GAP_Y)
    return graph
