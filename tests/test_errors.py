"""errors.check_int: the one integer check (bounds inclusive, bool refused, the message says how to fix)."""

from __future__ import annotations

import pytest

from circuitfind.errors import ConfigError, TaskError, check_int, check_optional_int


@pytest.mark.parametrize("value", [1, 5, 7])
def test_check_int_accepts_the_closed_range(value):
    assert check_int(value, "n", minimum=1, maximum=7) == value


@pytest.mark.parametrize("value", [0, 8, -1, True, False, 2.0, "3", None, [1]])
def test_check_int_refuses_outside_the_range_bools_and_non_ints(value):
    with pytest.raises(ConfigError, match=r"^n must be an integer in 1\.\.7; got "):
        check_int(value, "n", minimum=1, maximum=7)


def test_the_message_names_what_is_expected_and_how_to_fix():
    cases = [
        ({}, 0, "workers (processes) must be a positive integer; got 0"),
        ({"minimum": 0}, -1, "workers (processes) must be a non-negative integer; got -1"),
        ({"minimum": 2}, 1, "workers (processes) must be an integer >= 2; got 1"),
        ({"minimum": None}, "x", "workers (processes) must be an integer; got 'x'"),
        ({}, 3.0, "workers (processes) must be a positive integer; got 3.0. Pass 3 (an int, not a float)"),
        ({}, " 4", "workers (processes) must be a positive integer; got ' 4'. Pass 4 as a number, not a string"),
        ({"fix": "Try 2."}, 0, "workers (processes) must be a positive integer; got 0. Try 2."),
    ]
    for kwargs, value, message in cases:
        with pytest.raises(ConfigError) as info:
            check_int(value, "workers", what="processes", **kwargs)
        assert str(info.value) == message


def test_no_lower_bound_takes_any_int_and_the_error_class_is_the_callers():
    assert check_int(-(10**12), "seed", minimum=None) == -(10**12)
    with pytest.raises(TaskError, match="seed must be an integer; got True"):
        check_int(True, "seed", minimum=None, error=TaskError)


def test_check_optional_int_passes_none_and_checks_the_rest():
    assert check_optional_int(None, "chunk_size") is None
    assert check_optional_int(2, "chunk_size") == 2
    with pytest.raises(ConfigError, match=r"^chunk_size must be a positive integer or None; got 0$"):
        check_optional_int(0, "chunk_size")
    with pytest.raises(ConfigError, match="must be a positive integer; got None"):
        check_int(None, "chunk_size")  # only the optional variant lets None through
