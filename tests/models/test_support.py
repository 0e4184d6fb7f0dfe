"""The table of support: computed from the adapter registry, matching the published graph sizes, and the README's
table is exactly what ``circuitfind info --supported`` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitfind.cli.main import main
from circuitfind.models import ADAPTERS, REFERENCES, spec_for
from circuitfind.models.support import support_markdown, support_row, support_table
from tests.families_tiny import NEW_FAMILIES
from tests.models_tiny import FAMILIES, tiny_mistral, tiny_qwen2


def test_every_adapter_has_a_reference_and_a_row():
    assert set(REFERENCES) == set(ADAPTERS)
    assert [row.model_type for row in support_table()] == sorted(ADAPTERS)


@pytest.mark.parametrize(
    "model_type,edges",
    [("gpt2", 32_491), ("qwen2", 179_749), ("llama", 1_592_881)],  # REFERENCE.md §1 (MIB's counts)
)
def test_graph_sizes_match_the_published_counts(model_type, edges):
    assert support_row(model_type).n_edges == edges


def test_every_supported_model_type_has_a_tiny_model_under_test():
    """No adapter without the invariant tests: each model_type is built by a tiny factory of the test suite."""
    makers = [*FAMILIES.values(), *NEW_FAMILIES.values(), tiny_mistral, tiny_qwen2]
    tested = {make().config.model_type for make in makers}
    assert tested >= set(ADAPTERS), f"untested adapters: {sorted(set(ADAPTERS) - tested)}"


def test_adapter_column_names_the_module_that_builds_the_spec():
    model = NEW_FAMILIES["gemma2"]()
    assert support_row("gemma2").adapter == "gemma" and spec_for(model).family == "gemma"


def test_readme_table_is_the_generated_one(capsys):
    assert main(["info", "--supported"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == support_markdown()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert printed in readme, "README's table of supported models is stale: paste `circuitfind info --supported`"
