"""The test suite. It mirrors the package, one naming scheme:

- ``tests/<package path>/test_<module>.py`` tests ``circuitfind/<package path>/<module>.py`` (``tests/test_graph.py``
  tests ``circuitfind/graph.py``, ``tests/engine/test_patchable.py`` tests ``circuitfind/engine/patchable.py``); what a
  package's ``__init__.py`` itself defines is tested in ``tests/<package>/test_<package>.py``.
- Suffixes on the module name: ``test_<module>_real.py`` holds the real-model tests of that module (marked ``slow``,
  run with ``-m slow``), ``test_<module>_browser.py`` its tests in headless Chromium.
- A test goes in the file of the module that holds the code it checks, whatever issue or round it came from; its
  docstring or section comment says which defect it pins.
- ``tests/test_structure.py`` checks the package as a whole (layers, import cost, function length, the README's
  layout).
- ``tests/models/test_families.py`` runs the engine's invariants (all kept = HF, none kept = the corrupted run,
  random masks = the slow reference, fast ACDC = plain ACDC, gradients = autograd) over every adapter family at
  once: one matrix, so that a new family is one line of ``tests/families_tiny.py`` and cannot skip an invariant.
  The config flags of the GPT-2, GPT-NeoX and Llama adapters are in ``tests/models/test_<adapter>.py``.
- Helpers (tiny models, toy tasks, slow reference paths) are modules without the ``test_`` prefix, at ``tests/`` or
  next to their only user; fixtures shared by a folder live in its ``conftest.py``.

Every test checks the library against a hand computation or an independent slow path, never against itself.
"""
