"""``circuitfind scrub``: causal scrubbing of a saved circuit on a task's prompts, printed as one table.

    circuitfind scrub out/ioi/circuit.json --task ioi                 # 20 held-out IOI prompts, 200 draws
    circuitfind scrub out/ioi/circuit.json --task ioi --labels labels.json --contributions --json scrub.json

``--labels`` is a JSON object: node name -> one label per scrubbed prompt. The printing lives here; the library
returns a :class:`~circuitfind.scrubbing.ScrubResult`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuitfind.circuit import Circuit
from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError, TaskError
from circuitfind.fileio import atomic_write
from circuitfind.scrubbing import Hypothesis, scrub
from circuitfind.tasks import resolve_task

__all__ = ["add_scrub_parser"]


def add_scrub_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``scrub`` subcommand with the ``common`` options (--model, --device, --dtype, --no-progress).

    Example:
        >>> from circuitfind.cli.main import common_options
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> add_scrub_parser(sub, common_options())
        >>> sub.choices["scrub"].parse_args(["c.json", "--task", "ioi"]).draws
        200
    """
    p = subparsers.add_parser(
        "scrub",
        parents=[common],
        help="causal scrubbing of a saved circuit: how much of the metric survives resampling the rest",
        description="Causal scrubbing (Chan et al. 2022) of a saved circuit: edges outside it carry another "
        "prompt's values, nodes with --labels run on prompts that agree on their labels; prints the scrubbed "
        "metric, the full and everything-resampled baselines and the recovered fraction with a bootstrap interval.",
    )
    p.add_argument("circuit", type=Path, help="a circuit.json written by `circuitfind discover` or Circuit.save")
    p.add_argument("--task", default=None, help="a built-in task or task file (default: the circuit's)")
    p.add_argument("--n-prompts", type=int, default=20, help="discovery prompts of a built-in task, skipped (20)")
    p.add_argument("--held-out", type=int, default=20, help="prompts after those that are scrubbed (20)")
    p.add_argument("--seed", type=int, default=0, help="seed of a built-in task's prompts (default 0)")
    p.add_argument("--draws", type=int, default=200, help="(prompt, resample) draws (default 200)")
    p.add_argument("--draw-seed", type=int, default=0, help="seed of the draws and the bootstrap (default 0)")
    p.add_argument("--metric", default=None, help="logit_diff, prob_diff or kl (default: the task's)")
    p.add_argument("--labels", type=Path, default=None, help="JSON: node name -> one label per scrubbed prompt")
    p.add_argument("--independent", action="store_true", help="a separate resample for every edge and receiver")
    p.add_argument("--contributions", action="store_true", help="also resample each node in turn")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON")
    p.set_defaults(handler=_run_scrub)


def _run_scrub(args: argparse.Namespace) -> int:
    import time

    circuit = Circuit.load(args.circuit)
    name = args.task or circuit.config.get("task")
    if not name:
        raise TaskError("the circuit records no task; pass --task NAME_OR_FILE")
    if args.model is None and circuit.model:
        args.model = circuit.model
    pm, tokenizer = resolve_model(args.model, device=args.device, dtype=args.dtype, progress=args.progress)
    n = args.n_prompts + args.held_out
    task = resolve_task(name, tokenizer, n=n, seed=args.seed, n_train=args.n_prompts)
    task = task.subset(slice(args.n_prompts, min(n, len(task))))
    features = _read_labels(args.labels) if args.labels else {}
    t0 = time.perf_counter()
    res = scrub(
        pm,
        Hypothesis(circuit, features),
        task,
        metric=args.metric,
        n_samples=args.draws,
        seed=args.draw_seed,
        independent=args.independent,
        contributions=args.contributions,
    )
    print(f"{circuit.n_edges} edges, {len(task)} prompts, {res.n_samples} draws, {res.n_contexts} context(s)")
    print(f"{res.metric_name}: scrubbed {res.metric:.4f}  full {res.full:.4f}  random {res.random:.4f}")
    print(f"recovered {res.recovered:.4f}  {res.interval.level:.0%} interval {res.interval}")
    for node, c in sorted((res.contributions or {}).items(), key=lambda kv: -kv[1]["drop"]):
        print(f"  {node:<9} recovered without it {c['recovered']:.4f}  drop {c['drop']:+.4f}")
    for note in res.notes:
        print(f"note: {note}")
    print(f"scrub took {time.perf_counter() - t0:.1f} s")
    if args.json is not None:
        print(f"wrote {atomic_write(args.json, json.dumps(res.to_dict(), indent=1))}")
    return 0


def _read_labels(path: Path) -> dict:
    """The ``--labels`` JSON object (node name -> labels), or a :class:`ConfigError` naming the file and the fix."""
    fix = 'expected a JSON object of node name -> one label per scrubbed prompt, e.g. {"a0.h1": [0, 1, 0]}'
    if not path.is_file():
        raise ConfigError(f"--labels {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"--labels {str(path)!r} is not valid JSON (line {e.lineno}: {e.msg}); {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--labels {str(path)!r} cannot be read as JSON text ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--labels {str(path)!r} holds a JSON {type(data).__name__}; {fix}")
    return data
