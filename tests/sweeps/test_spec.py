"""Sweep specs (sweeps/spec.py): a malformed spec names its field, the example spec parses, and a binary file or a
grid of a million cells is refused before any work, with the count (issue 19, item 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitfind.cli.main import main
from circuitfind.sweeps import SpecError, load_spec, parse_spec


def test_a_binary_sweep_spec_is_a_spec_error(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_bytes(b"SQLite format 3\x00\xff\xfe\x80\x81" + bytes(range(256)))
    with pytest.raises(SpecError, match=r"is not UTF-8 text \(byte 0xff at offset 16\)"):
        load_spec(path)
    assert main(["sweep", str(path), "--table"]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and "Traceback" not in err


def test_a_grid_of_a_million_cells_is_refused_with_its_count_before_expanding(tmp_path, capsys):
    huge = {"out": str(tmp_path / "o"), "grid": {"model": "m", "task": "ioi", "seed": list(range(1000))}}
    huge["grid"]["n_prompts"] = list(range(1, 1001))
    with pytest.raises(SpecError, match=r"expand to 1,000,000 cells, more than max_cells = 10,000"):
        parse_spec(huge)
    grids = [{"model": "m", "task": "ioi", "seed": [0, 1, 2]}, {"model": "m", "task": "ioi", "seed": 7}]
    two_grids = {**huge, "grid": grids}
    with pytest.raises(SpecError, match=r"expand to 4 cells \(3 \+ 1 over 2 grids\), more than max_cells = 3"):
        parse_spec({**two_grids, "max_cells": 3})
    assert len(parse_spec({**two_grids, "max_cells": 4}).cells) == 4
    with pytest.raises(SpecError, match=r"'max_cells' must be a positive integer; got"):
        parse_spec({**two_grids, "max_cells": 0})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**two_grids, "max_cells": 3}))
    assert len(load_spec(path, max_cells=4).cells) == 4  # --max-cells overrides the spec's field
    assert main(["sweep", str(path), "--table", "--max-cells", "2"]) == 2
    err = capsys.readouterr().err
    assert "expand to 4 cells" in err and "--max-cells N" in err and "Traceback" not in err
    assert main(["sweep", str(path), "--table", "--max-cells", "4"]) == 0
    assert "no results yet" in capsys.readouterr().out


# --- malformed specs name their field; the example spec parses -------------------------------------------------
GOOD = {"out": "o", "grid": {"model": "m", "task": "ioi"}}


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ({"grid": {"model": "m", "task": "ioi"}}, "'out'"),
        ({**GOOD, "grids": []}, "grids"),
        ({**GOOD, "grid": {"model": "m"}}, "grid.task"),
        ({**GOOD, "grid": {"model": "m", "task": "ioi", "threshold": ["a"]}}, "grid.threshold[0]"),
        ({**GOOD, "grid": [GOOD["grid"], {"model": "m", "task": "ioi", "method": "nope"}]}, "grid[1].method"),
        ({**GOOD, "grid": {"model": "m", "task": "ioi", "seed": 1.5}}, "grid.seed"),
        ({**GOOD, "grid": {"model": "m", "task": "ioi", "target": 2}}, "grid.target"),
        ({**GOOD, "grid": {"model": "m", "task": "ioi", "tresh": 1}}, "grid.tresh"),
        ({**GOOD, "grid": {"model": "m", "task": "unknown-task"}}, "grid.task"),
        ({**GOOD, "defaults": {"held_out": 0}}, "defaults.held_out"),
        ({**GOOD, "grid": {"model": "m", "task": "ioi", "n_prompts": []}}, "grid.n_prompts"),
        ({**GOOD, "grid": {"model": "m", "task": "ioi", "method": "eap", "target": 0.5, "n_edges": 3}}, "n_edges"),
        ({**GOOD, "workers": 0}, "'workers'"),
        ({**GOOD, "defaults": {"num_gpus": -1}}, "defaults.num_gpus"),
    ],
)
def test_a_malformed_spec_names_its_field(spec, names):
    with pytest.raises(SpecError, match="spec field|unknown") as e:
        parse_spec(spec)
    assert names in str(e.value)


def test_a_spec_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    assert main(["sweep", str(path), "--table"]) == 2


def test_the_example_spec_parses():
    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "sweep.json")
    assert len(spec.cells) == 50 and len({c.id for c in spec.cells}) == 50
    assert {c.method for c in spec.cells} == {"eap", "eap-ig", "eap-ig-mask", "hybrid", "acdc"}
