"""The ``circuitfind`` command line (:mod:`~circuitfind.cli.main`) and its figures (:mod:`~circuitfind.cli.plots`,
matplotlib optional): the only part of the package that prints and draws."""

from __future__ import annotations

from circuitfind.cli.main import main

__all__ = ["main"]
