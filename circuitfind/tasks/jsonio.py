"""Custom tasks from JSON or JSONL files, and tasks written back to JSON.

**The format you write by hand** is a JSON list of prompt objects::

    [
      {"clean": "When Mary and John went to the store, John gave a drink to",
       "corrupted": "When Anna and Paul went to the store, Mike gave a drink to",
       "answers": " Mary", "wrong_answers": " John"},
      ...
    ]

* ``clean``, ``corrupted`` (strings, required): the prompt pair; both must tokenise to the same length.
* ``answers`` (a string or a list of strings, required): correct next tokens, each a single token, written as
  a continuation (``" Mary"`` with its leading space).
* ``wrong_answers`` (a string or a list of strings, optional).

The same objects may instead sit one per line in a JSONL file (``.jsonl``, or any file whose content is one
object per line; blank lines are skipped), or under ``"prompts"`` in a top-level object that also sets task
options::

    {"name": "my-ioi", "metric": "logit_diff", "n_train": 80, "seed": 0, "prompts": [ ... ]}

Top-level options: ``name`` (default: the file name without extension), ``metric`` (``"logit_diff"`` or
``"prob_diff"``), ``n_train`` (first prompts = train split), ``seed``, ``prepend_bos``; keyword arguments of
:func:`from_json` override them.

**The format :func:`to_json` writes** holds token ids, so that reading it back gives identical tensors
without re-tokenising: the top-level object form with ``pad_id`` and ``seq_len``, and per prompt
``clean_ids``, ``corrupted_ids`` (unpadded), ``answer_pos``, ``answer_ids``, ``wrong_answer_ids`` and, when
the task has them, the ``clean`` / ``corrupted`` strings for display. A file whose prompts carry ``clean_ids``
is read from the ids (the tokenizer may be None); the strings are then only labels.

Errors name the file, the item (0-based index in the list) or line (1-based, JSONL), and the field:
``tasks.json: item 3: field 'corrupted' is missing``.

``max_prompts`` reads only the first prompts of a big file: a JSONL file is read line by line and closed after
them, a JSON list is parsed item by item up to them (the object form is parsed whole, its prompts cut), and no
prompt after them is ever tokenised.
"""

from __future__ import annotations

import errno
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import torch

from circuitfind.errors import TaskError, check_int, check_optional_int
from circuitfind.fileio import atomic_write
from circuitfind.tasks.base import PAD_ANSWER, Task, build_from_ids, build_from_strings, pad_id_of

__all__ = ["TASK_FILE_SUFFIXES", "check_task_file", "from_json", "is_task_file", "to_json"]

TASK_FILE_SUFFIXES = (".json", ".jsonl")
"""A task argument ending in one of these (any case) names a task file; anything else a built-in task."""


def is_task_file(task: str | Path) -> bool:
    """Whether the task argument ``task`` names a task file (``.json`` / ``.jsonl``, any case) rather than a
    built-in task: the one rule the API, the command line and sweep specs share.

    Example:
        >>> is_task_file("prompts/IOI.JSONL"), is_task_file("greater-than")
        (True, False)
    """
    return str(task).strip().lower().endswith(TASK_FILE_SUFFIXES)


_TOP_KEYS = ("name", "metric", "seed", "n_train", "prepend_bos", "pad_id", "seq_len", "prompts")
_STRING_FIELDS = ("clean", "corrupted", "answers", "wrong_answers")
_ID_FIELDS = (
    "clean_ids",
    "corrupted_ids",
    "answer_pos",
    "answer_ids",
    "wrong_answer_ids",
    "clean",
    "corrupted",
)
_UNSET: Any = object()
_INT64_MAX = 2**63 - 1
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def from_json(
    path: str | Path,
    tokenizer: Any,
    *,
    name: str | None = None,
    metric: str | None = None,
    seed: int | None = None,
    n_train: int | None = _UNSET,
    prepend_bos: bool | None = _UNSET,
    max_prompts: int | None = None,
) -> Task:
    """Read a task from a JSON or JSONL file (format in the module docstring).

    Args:
        path: the file; ``.jsonl`` files, and files holding one JSON object per line, are read as JSONL.
        tokenizer: the tokenizer of the model the task is for (may be None for files written by
            :func:`to_json`, which hold token ids).
        name: task name; default: the file's ``name`` option, else the file name without extension.
        metric: overrides the file's ``metric`` option (default ``"logit_diff"``).
        seed: overrides the file's ``seed`` option (default 0).
        n_train: overrides the file's ``n_train`` option (default None: all prompts are train).
        prepend_bos: overrides the file's ``prepend_bos`` option (default: as in :meth:`Task.from_strings`).
        max_prompts: read (and tokenise) only the file's first ``max_prompts`` prompts; None: all of them.

    Returns:
        the validated task.

    Raises:
        TaskError: unreadable or malformed file, naming the item or line and the field; or any error of
            :meth:`Task.from_strings` (unequal pair lengths, multi-token answers...), located in the file.

    Example:
        >>> task = from_json("tasks/my_ioi.json", tokenizer, n_train=80)  # doctest: +SKIP
    """
    check_optional_int(max_prompts, "max_prompts", error=TaskError)
    path = check_task_file(path)
    label = path.name
    options, items, where = _read(path, label, max_prompts)
    if not items:
        raise TaskError(f"{label}: the file holds no prompt; add at least one prompt object")

    opts: dict[str, Any] = {  # their types are checked next
        "name": name if name is not None else options.get("name", path.stem),
        "metric": metric if metric is not None else options.get("metric", "logit_diff"),
        "seed": seed if seed is not None else options.get("seed", 0),
        "n_train": n_train if n_train is not _UNSET else options.get("n_train"),
    }
    _check_option_types(opts, label)
    if max_prompts is not None and len(items) == max_prompts and (opts["n_train"] or 0) > max_prompts:
        opts["n_train"] = max_prompts  # the file's split reaches past the prompts read: all of them are train
    bos = prepend_bos if prepend_bos is not _UNSET else options.get("prepend_bos")
    if bos is not None and not isinstance(bos, bool):
        raise TaskError(f"{label}: option 'prepend_bos' must be true, false or null; got {bos!r}")

    def locate(i: int) -> str:
        return f"{label}: {where(i)}"

    try:
        if any(isinstance(it, dict) and "clean_ids" in it for it in items):
            return _task_from_ids(items, tokenizer, options, opts, locate)
        if tokenizer is None:
            raise TaskError(
                f"{label}: prompts given as strings need a tokenizer: pass the model's tokenizer (tokenizer=...; "
                "on the command line --tokenizer PATH_OR_ID), or write the prompts as token ids "
                "(clean_ids, corrupted_ids, answer_ids)"
            )
        clean, corrupted, answers, wrong = [], [], [], []
        for i, item in enumerate(items):
            _check_fields(item, _STRING_FIELDS, ("clean", "corrupted", "answers"), locate(i))
            clean.append(_string(item, "clean", locate(i)))
            corrupted.append(_string(item, "corrupted", locate(i)))
            answers.append(_strings(item, "answers", locate(i), allow_empty=False))
            wrong.append(
                _strings(item, "wrong_answers", locate(i), allow_empty=True) if "wrong_answers" in item else []
            )
        return build_from_strings(tokenizer, clean, corrupted, answers, wrong, prepend_bos=bos, where=locate, **opts)
    except TaskError as e:
        msg = str(e)
        raise TaskError(msg if msg.startswith(label) else f"{label}: {msg}") from None


def to_json(task: Task, path: str | Path) -> None:
    """Write ``task`` as JSON token ids (plus its prompt strings, if any) that :func:`from_json` reads back.

    Args:
        task: the task to save.
        path: a ``.json`` path (JSONL cannot hold the task options).

    Raises:
        TaskError: a ``.jsonl`` path, or padding positions holding several different ids.

    Example:
        >>> to_json(task, tmp_path / "toy.json")  # token ids: no tokenizer needed to read them back
        >>> torch.equal(from_json(tmp_path / "toy.json", None).clean_ids, task.clean_ids)
        True
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        raise TaskError(f"to_json writes one JSON document (options and prompts); give a .json path, not {path.name}")
    task = task.to("cpu")
    mask = task.attention_mask.bool()  # (N, T)
    pads = torch.cat([task.clean_ids[~mask], task.corrupted_ids[~mask]]).unique().tolist()
    if len(pads) > 1:
        raise TaskError(f"task {task.name!r}: padding positions hold several ids {pads}; to_json stores one pad id")
    meta = {
        "name": task.name,
        "metric": task.metric,
        "seed": task.seed,
        "n_train": task.n_train,
        "pad_id": pads[0] if pads else 0,
        "seq_len": task.seq_len,
    }
    lines = []
    for i, n_tok in enumerate(task.lengths.tolist()):
        item: dict[str, Any] = {}
        if task.prompts:
            item["clean"] = task.prompts[i]
        if task.corrupted_prompts:
            item["corrupted"] = task.corrupted_prompts[i]
        item["clean_ids"] = task.clean_ids[i, :n_tok].tolist()
        item["corrupted_ids"] = task.corrupted_ids[i, :n_tok].tolist()
        item["answer_pos"] = int(task.answer_pos[i])
        item["answer_ids"] = [a for a in task.answers[i].tolist() if a != PAD_ANSWER]
        item["wrong_answer_ids"] = [a for a in task.wrong_answers[i].tolist() if a != PAD_ANSWER]
        lines.append("  " + json.dumps(item, ensure_ascii=False))
    head = json.dumps(meta, ensure_ascii=False)[:-1]
    atomic_write(path, head + ', "prompts": [\n' + ",\n".join(lines) + "\n]}\n")


# --- reading -------------------------------------------------------------------------------------
def check_task_file(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it names something readable as a task file; else a
    :class:`TaskError` saying what it is instead (missing, a directory, a symbolic link loop, a broken link).

    Example:
        >>> check_task_file(tmp_path)
        Traceback (most recent call last):
        ...
        circuitfind.errors.TaskError: cannot read task file '...': it is a directory, not a file; ...
    """
    path = Path(path).expanduser()
    where = f"cannot read task file {str(path)!r}"
    try:
        info = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TaskError(
                f"{where}: it is a symbolic link loop (following its links leads back to itself); point the "
                "link at the real task file"
            ) from None
        if e.errno == errno.ENOENT:
            dangling = path.is_symlink()
            raise TaskError(
                f"{where}: "
                + ("it is a symbolic link to a file that does not exist" if dangling else "it does not exist")
                + "; pass a JSON or JSONL task file"
            ) from None
        raise TaskError(f"{where}: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise TaskError(f"{where}: it is a directory, not a file; pass the JSON or JSONL task file inside it")
    return path


def _read(path: Path, label: str, max_prompts: int | None) -> tuple[dict[str, Any], list[Any], Callable[[int], str]]:
    """Options, the first ``max_prompts`` items and their names; a ``.jsonl`` file is streamed line by line."""
    if path.suffix.lower() == ".jsonl":
        return _stream_jsonl(path, label, max_prompts)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TaskError(f"cannot read task file {str(path)!r}: {e.strerror or e}") from None
    return _parse(_decode(raw, label), label, jsonl=False, max_prompts=max_prompts)


def _stream_jsonl(
    path: Path, label: str, max_prompts: int | None
) -> tuple[dict[str, Any], list[Any], Callable[[int], str]]:
    items: list[Any] = []
    lines: list[int] = []
    offset = 0
    try:
        with path.open("rb") as f:
            for ln, raw in enumerate(f, start=1):
                text = _decode(raw, label, offset=offset, first=ln == 1)
                offset += len(raw)
                if not text.strip():
                    continue
                items.append(_load_line(text, label, ln))
                lines.append(ln)
                if max_prompts is not None and len(items) >= max_prompts:
                    break  # the rest of the file is never read
    except OSError as e:
        raise TaskError(f"cannot read task file {str(path)!r}: {e.strerror or e}") from None
    return {}, items, lambda i: f"line {lines[i]}"


def _load_line(text: str, label: str, ln: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"{label}: line {ln}: not valid JSON (column {e.colno}): {e.msg}") from None
    except RecursionError:
        raise TaskError(f"{label}: line {ln}: {_TOO_DEEP}") from None


_TOO_DEEP = (
    "JSON nested too deeply to read (lists or objects inside each other thousands of levels deep); a prompt "
    "object holds strings or lists of strings or ids, one or two levels deep"
)


def _decode(raw: bytes, label: str, *, offset: int = 0, first: bool = True) -> str:
    """The file's text: UTF-8 (a leading byte-order mark is allowed); anything else is a :class:`TaskError`.

    ``raw`` may be a piece of the file starting at byte ``offset`` (``first``: the piece the file starts with)."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        utf16 = first and raw.startswith((b"\xff\xfe", b"\xfe\xff"))
        found = (
            "UTF-16 text (it starts with a UTF-16 byte-order mark)"
            if utf16
            else (
                f"byte 0x{raw[e.start]:02x} at offset {offset + e.start}, which is not UTF-8 (perhaps Latin-1 or "
                "cp1252 text)"
            )
        )
        raise TaskError(
            f"{label}: a task file must be UTF-8 text; found {found}. Save it as UTF-8, e.g. "
            f"`iconv -f {'utf-16' if utf16 else 'latin1'} -t utf-8 {label} > fixed.json`"
        ) from None


def _parse(
    text: str, label: str, *, jsonl: bool, max_prompts: int | None = None
) -> tuple[dict[str, Any], list[Any], Callable[[int], str]]:
    """Options, prompt items (the first ``max_prompts``), and a function naming item ``i`` (``"item 3"`` or
    ``"line 4"``)."""
    if not jsonl and max_prompts is not None and text.lstrip().startswith("["):
        items = _list_prefix(text, label, max_prompts)
        if items is not None:
            return {}, items, lambda i: f"item {i}"
    if not jsonl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": several documents, i.e. JSONL
                raise TaskError(f"{label}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
            jsonl = True
        except RecursionError:
            raise TaskError(f"{label}: {_TOO_DEEP}") from None
    if jsonl:
        items, lines = [], []
        for ln, raw in enumerate(text.split("\n"), start=1):
            if not raw.strip():
                continue
            items.append(_load_line(raw, label, ln))
            lines.append(ln)
            if max_prompts is not None and len(items) >= max_prompts:
                break
        return {}, items, lambda i: f"line {lines[i]}"
    if isinstance(data, list):
        return {}, data[:max_prompts], lambda i: f"item {i}"
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise TaskError(f"{label}: unknown top-level field {unknown[0]!r}; expected some of {', '.join(_TOP_KEYS)}")
        if "prompts" not in data:
            raise TaskError(f"{label}: top-level field 'prompts' is missing; put the list of prompt objects there")
        if not isinstance(data["prompts"], list):
            raise TaskError(f"{label}: field 'prompts' must be a list of objects; got {type(data['prompts']).__name__}")
        options = {k: v for k, v in data.items() if k != "prompts"}
        return options, data["prompts"][:max_prompts], lambda i: f"item {i}"
    raise TaskError(
        f"{label}: expected a list of prompt objects or an object with 'prompts'; got {type(data).__name__}"
    )


def _list_prefix(text: str, label: str, max_prompts: int) -> list[Any] | None:
    """The first ``max_prompts`` items of the JSON list ``text``, parsed one by one (the rest is not parsed); None
    when the list ends before and something follows it (then the whole text is parsed as usual)."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    items: list[Any] = []

    def fail(msg: str, pos: int) -> TaskError:
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return TaskError(f"{label}: not valid JSON (line {line}, column {column}): {msg}")

    i = _skip_whitespace(text, i)
    if text.startswith("]", i):
        return items if not text[i + 1 :].strip() else None
    while len(items) < max_prompts:
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise TaskError(f"{label}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
        except RecursionError:
            raise TaskError(f"{label}: {_TOO_DEEP}") from None
        items.append(item)
        i = _skip_whitespace(text, i)
        if text.startswith("]", i):
            return items if not text[i + 1 :].strip() else None
        if not text.startswith(",", i):
            raise fail("Expecting ',' delimiter", i)
        i = _skip_whitespace(text, i + 1)
    return items


def _skip_whitespace(text: str, i: int) -> int:
    """The index of the first character at or after ``i`` that is not JSON whitespace."""
    match = _WHITESPACE.match(text, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _check_option_types(opts: dict[str, Any], label: str) -> None:
    if not isinstance(opts["name"], str):
        raise TaskError(f"{label}: option 'name' must be a string; got {opts['name']!r}")
    if not isinstance(opts["metric"], str):
        raise TaskError(f"{label}: option 'metric' must be a string; got {opts['metric']!r}")
    check_int(opts["seed"], f"{label}: option 'seed'", minimum=None, error=TaskError)
    check_optional_int(opts["n_train"], f"{label}: option 'n_train'", minimum=None, error=TaskError)


def _check_fields(item: Any, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    if not isinstance(item, dict):
        raise TaskError(f'{where}: expected a prompt object {{"clean": ..., ...}}; got {type(item).__name__}')
    for field in required:
        if field not in item:
            raise TaskError(f"{where}: field {field!r} is missing")
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise TaskError(f"{where}: unknown field {unknown[0]!r}; expected some of {', '.join(allowed)}")


def _string(item: dict[str, Any], field: str, where: str) -> str:
    value = item[field]
    if not isinstance(value, str):
        raise TaskError(f"{where}: field {field!r} must be a string; got {type(value).__name__} {value!r}")
    return value


def _strings(item: dict[str, Any], field: str, where: str, *, allow_empty: bool) -> list[str]:
    value = item[field]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TaskError(f"{where}: field {field!r} must be a string or a list of strings; got {value!r}")
    if not values and not allow_empty:
        raise TaskError(f"{where}: field {field!r} is empty; give at least one answer")
    return values


def _ints(item: dict[str, Any], field: str, where: str, *, allow_empty: bool, vocab: int | None) -> list[int]:
    value = item[field]
    if not isinstance(value, list) or not all(_is_int(v) and v >= 0 for v in value):
        raise TaskError(f"{where}: field {field!r} must be a list of token ids (integers >= 0); got {_short(value)}")
    if not value and not allow_empty:
        raise TaskError(f"{where}: field {field!r} is empty")
    limit = _INT64_MAX if vocab is None else vocab - 1
    for j, v in enumerate(value):
        if v > limit:
            what = "the largest 64-bit integer" if vocab is None else f"the tokenizer's vocabulary ({vocab} tokens)"
            raise TaskError(
                f"{where}: field {field!r} holds token id {_short(v)} at position {j}, outside {what}; token ids "
                f"are 0 .. {limit}"
            )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _vocab_size(tokenizer: Any) -> int | None:
    try:
        n = len(tokenizer) if tokenizer is not None else None
    except TypeError:
        n = getattr(tokenizer, "vocab_size", None)
    return n if _is_int(n) and n > 0 else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _task_from_ids(
    items: list[Any],
    tokenizer: Any,
    options: dict[str, Any],
    opts: dict[str, Any],
    locate: Callable[[int], str],
) -> Task:
    required = ("clean_ids", "corrupted_ids", "answer_ids")
    clean: list[list[int]] = []
    corrupted: list[list[int]] = []
    answers: list[list[int]] = []
    wrong: list[list[int]] = []
    pos: list[int] = []
    prompts: list[str] = []
    corrupted_prompts: list[str] = []
    vocab = _vocab_size(tokenizer)
    for i, item in enumerate(items):
        where = locate(i)
        _check_fields(item, _ID_FIELDS, required, where)
        c, k = (
            _ints(item, "clean_ids", where, allow_empty=False, vocab=vocab),
            _ints(item, "corrupted_ids", where, allow_empty=False, vocab=vocab),
        )
        if len(c) != len(k):
            raise TaskError(f"{where}: 'clean_ids' has {len(c)} ids but 'corrupted_ids' has {len(k)}; make them equal")
        clean.append(c)
        corrupted.append(k)
        answers.append(_ints(item, "answer_ids", where, allow_empty=False, vocab=vocab))
        wrong.append(
            _ints(item, "wrong_answer_ids", where, allow_empty=True, vocab=vocab) if "wrong_answer_ids" in item else []
        )
        p = item.get("answer_pos", len(c) - 1)
        if not _is_int(p) or not 0 <= p < len(c):
            raise TaskError(f"{where}: field 'answer_pos' must be an integer in 0..{len(c) - 1}; got {p!r}")
        pos.append(p)
        for field, out in (("clean", prompts), ("corrupted", corrupted_prompts)):
            if field in item:
                out.append(_string(item, field, where))
    for field, out in (("clean", prompts), ("corrupted", corrupted_prompts)):
        if out and len(out) != len(items):
            raise TaskError(f"field {field!r} is given for some prompts but not all; give it for all or none")
    pad_id = options.get("pad_id", pad_id_of(tokenizer) if tokenizer is not None else 0)
    seq_len = options.get("seq_len")
    for key, value in (("pad_id", pad_id), ("seq_len", seq_len)):
        if value is not None and not (_is_int(value) and 0 <= value <= _INT64_MAX):
            raise TaskError(f"option {key!r} must be an integer in 0 .. 2**63 - 1; got {_short(value)}")
    return build_from_ids(
        clean_rows=clean,
        corrupted_rows=corrupted,
        answer_rows=answers,
        wrong_rows=wrong,
        pad_id=pad_id,
        prompts=prompts,
        corrupted_prompts=corrupted_prompts,
        answer_pos=pos,
        seq_len=seq_len,
        where=locate,
        **opts,
    )
