"""The engine: the edge-masked forward pass of a patchable model, and nothing above it.

* :mod:`~circuitfind.engine.patchable`: :class:`PatchableModel` (``cf.PatchableModel``), its ablation sources
  (:class:`Ablation`: resample, mean, zero) and the plain and routed forwards;
* :mod:`~circuitfind.engine.ablations`: the ablation kinds and ablated outputs; :mod:`~circuitfind.engine.cache`:
  the prefix cache exact tests restart from; :mod:`~circuitfind.engine.attention`: the attention kernels;
* :mod:`~circuitfind.engine.forward`: that forward pass step by step (receiver inputs, attention, MLP, unembedding);
* :mod:`~circuitfind.engine.receivers`: the store of sender differences and row-sparse input mixing;
* :mod:`~circuitfind.engine.gradients`: edge-mask gradients for every edge at once (EAP, EAP-IG);
* :mod:`~circuitfind.engine.memory`: the memory estimates of a pass and the peak-memory reader.

Nothing here imports tasks, metrics, algorithms, evaluation or file I/O: the engine takes tensors and returns
tensors. Layer order (bottom up): errors / fileio -> graph -> models -> engine -> metrics / tasks -> problem -> ...
"""

from __future__ import annotations

from circuitfind.engine.ablations import AblatedOutputs, Ablation
from circuitfind.engine.cache import PrefixCache
from circuitfind.engine.patchable import PatchableModel, resolve_model

__all__ = ["AblatedOutputs", "Ablation", "PatchableModel", "PrefixCache", "resolve_model"]
