"""Running ``circuitfind discover`` in-process on a saved model folder (the command-line tests of bad input)."""

from __future__ import annotations

from circuitfind.cli.main import main


def discover_cli(model_dir, task, out, *extra: str) -> int:
    """The exit code of ``discover --model model_dir --task task --out out --threshold 0.01 *extra``."""
    argv = ["discover", "--model", str(model_dir), "--task", str(task), "--out", str(out), "--no-progress"]
    return main([*argv, "--threshold", "0.01", *extra])
