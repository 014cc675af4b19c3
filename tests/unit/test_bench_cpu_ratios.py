"""The CPU-ratio benchmarks' helpers (issue 16): ABBA alternation and the load recorded with every --json."""

from __future__ import annotations

import json
import os

from dad_ray.bench import write_json
from dad_ray.bench.data import abba_order


def test_abba_order_alternates_and_balances_the_sides():
    assert abba_order(1) == ["ray", "torch"]
    assert abba_order(2) == ["ray", "torch", "torch", "ray"]
    order = abba_order(3)
    assert order.count("ray") == order.count("torch") == 3
    # mean position of each side is equal for an even number of repeats: a load trend falls on both alike
    order = abba_order(4)
    mean = {s: sum(i for i, x in enumerate(order) if x == s) / 4 for s in ("ray", "torch")}
    assert mean["ray"] == mean["torch"]


def test_write_json_records_the_load_unless_given(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    figures = json.loads((tmp_path / "a.json").read_text())
    assert figures["x"] == 1 and len(figures["loadavg"]) == 3
    assert all(v >= 0 for v in figures["loadavg"])
    write_json(tmp_path / "b.json", {"loadavg": "given"})
    assert json.loads((tmp_path / "b.json").read_text())["loadavg"] == "given"
    write_json(tmp_path / "c.json", [1, 2])  # a list stays a list
    assert json.loads((tmp_path / "c.json").read_text()) == [1, 2]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
