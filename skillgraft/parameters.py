"""The chapters' parameters: where the notebooks are, the defaults of their ``parameters`` cells,
and the checks every value passes before any compute (names, types, ranges, task names). The
command line, the publisher and the exercises read parameters through this module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

__all__ = ["UsageError", "repo_root", "list_notebooks", "resolve_notebook", "notebook_parameters",
           "check_parameters", "parse_params", "TASK_PARAMETERS"]


TASK_PARAMETERS = ("task", "tasks", "sources", "targets", "sequence", "reference")  # values must be registered task names


class UsageError(ValueError):
    """Bad input on the command line; the message names what is accepted."""


def repo_root() -> Path:
    """The compendium's root: the folder holding ``notebooks/`` (source checkout or cwd)."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()


def list_notebooks(root: Path | None = None) -> list[Path]:
    return sorted((root or repo_root()).joinpath("notebooks").glob("[0-9][0-9]_*.ipynb"))


def resolve_notebook(name: str, root: Path | None = None) -> Path:
    """``01``, ``01_single_task_grafting``, or a path to an .ipynb."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    books = list_notebooks(root)
    hits = [nb for nb in books if nb.stem == name or nb.stem.split("_", 1)[0] == name]
    if len(hits) != 1:
        raise UsageError(f"unknown notebook {name!r}; accepted: {', '.join(nb.stem for nb in books) or '(none found)'}")
    return hits[0]


def notebook_parameters(path: Path) -> dict:
    """Defaults of the notebook's cell tagged ``parameters``, as Python values."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise UsageError(f"{path.name} must have exactly one cell tagged 'parameters' (found {len(cells)})")
    params = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    params[target.id] = ast.literal_eval(node.value)
    return params


def _type_ok(value, default) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _check_values(params: dict) -> None:
    """Checks of meaning that a type check cannot make (task names, devices)."""
    from . import tasks
    from .models import resolve_device

    known = set(tasks.list_tasks())
    sequences = params.get("sequences")
    if sequences is not None:
        if not isinstance(sequences, (list, tuple)) or not sequences \
                or not all(isinstance(q, (list, tuple)) for q in sequences):
            raise UsageError(f"parameter 'sequences' is a non-empty list of task lists, e.g. [['mr', 'trec', 'sms']], "
                             f"got {sequences!r}")
        for q in sequences:
            _check_values({"sequence": q})
        if len({tuple(q) for q in sequences}) != len(sequences):
            raise UsageError(f"parameter 'sequences' repeats a sequence ({sequences!r}); give each once")
    for name, value in params.items():
        if name in TASK_PARAMETERS:
            if isinstance(value, (list, tuple)):
                if not value:
                    raise UsageError(f"parameter {name!r} is empty; give at least one task, e.g. {name} = ['mr'] "
                                     f"(accepted: {', '.join(sorted(known))})")
                repeated = sorted({t for t in value if isinstance(t, str) and value.count(t) > 1})
                if repeated:
                    raise UsageError(f"parameter {name!r} names {', '.join(map(repr, repeated))} more than once; "
                                     "give each task once")
            for task in value if isinstance(value, (list, tuple)) else [value]:
                if task not in known:
                    raise UsageError(f"parameter {name!r}: unknown task {task!r}; accepted: {', '.join(sorted(known))}")
        if name == "targets" and isinstance(params.get("sources"), (list, tuple)) and isinstance(value, (list, tuple)):
            from .chapters.ood import same_labels
            unmatched = [t for t in value if t in known and not any(s in known and same_labels(s, t)
                                                                     for s in params["sources"])]
            if unmatched:
                raise UsageError(f"parameter 'targets': target(s) {unmatched} share no source's classes; a target is "
                                 f"scored with its source's prompt, so it needs the classes of one of {params['sources']}")
        if name == "model":
            from .models import check_model
            try:
                check_model(value)
            except ValueError as err:
                raise UsageError(f"parameter 'model': {err}") from err
        if name == "device" and str(value) != "auto" and not str(value).startswith("cuda"):
            try:
                resolve_device(value)
            except (RuntimeError, ValueError) as err:
                raise UsageError(f"parameter 'device': {err}") from err
    from .prompt import PRECISIONS

    if "precision" in params and params["precision"] not in PRECISIONS:
        raise UsageError(f"parameter 'precision': unknown precision {params['precision']!r}; "
                         f"accepted: {', '.join(PRECISIONS)}")
    for name in ("k", "test_size", "max_length", "seed", "ece_bins", "compare_seeds"):
        value = params.get(name)
        low = 0 if name in ("seed", "compare_seeds") else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UsageError(f"parameter {name!r} must be an integer ≥ {low}, got {value!r}")
    seeds = params.get("seeds")
    if seeds is not None and (not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise UsageError(f"parameter 'seeds' must be a non-empty list of integers ≥ 0, got {seeds!r}")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise UsageError(f"parameter 'seeds' repeats a seed ({seeds!r}): each data seed counts once in every interval; "
                         "give distinct seeds")
    for name in ("sparsities", "claim_sparsity"):
        values = params.get(name)
        for value in values if isinstance(values, (list, tuple)) else [] if values is None else [values]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise UsageError(f"parameter {name!r}: a sparsity is a fraction in (0, 1] of the graftable "
                                 f"parameters, got {value!r}")
    if "sparsities" in params and "claim_sparsity" in params and params["claim_sparsity"] not in params["sparsities"]:
        raise UsageError(f"parameter 'claim_sparsity' ({params['claim_sparsity']!r}) must be one of 'sparsities' "
                         f"({params['sparsities']!r}): the claim is checked on a graft that was computed")
    from .finetune import FinetuneConfig
    from .localization import GraftConfig

    for prefix, config, extra in (("ft_", FinetuneConfig, {}), ("graft_", GraftConfig, {"sparsity": 1e-4})):
        fields = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        try:
            config(**{**extra, **fields})
        except (TypeError, ValueError) as err:
            raise UsageError(f"parameters {prefix}*: {err}") from err


def check_parameters(path: Path, given: dict) -> dict:
    """Validate ``given`` against the notebook's parameters; returns it unchanged or raises UsageError."""
    defaults = notebook_parameters(path)
    for name, value in given.items():
        if name not in defaults:
            raise UsageError(f"unknown parameter {name!r} for {path.stem}; accepted: {', '.join(defaults)}")
        if not _type_ok(value, defaults[name]):
            raise UsageError(f"parameter {name!r} of {path.stem} expects {type(defaults[name]).__name__} "
                             f"(default {defaults[name]!r}), got {type(value).__name__} {value!r}")
    _check_values({**defaults, **given})
    return given


def parse_params(pairs: list[list[str]], files: list[str]) -> dict:
    params: dict = {}
    for file in files:
        try:
            text = Path(file).read_text()
        except OSError as err:
            raise UsageError(f"cannot read parameter file {file}: {err.strerror or err}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise UsageError(f"parameter file {file} is not valid YAML{at}: "
                             f"{getattr(err, 'problem', None) or err}") from None
        if not isinstance(data, dict):
            raise UsageError(f"parameter file {file} must hold a mapping name: value")
        params.update(data)
    for name, raw in pairs:
        try:
            params[name] = _value(raw)
        except yaml.YAMLError as err:
            raise UsageError(f"value of -p {name} is not valid YAML: {raw!r} "
                             f"({getattr(err, 'problem', None) or err})") from None
    return params


def _value(raw: str):
    """A command-line value read as YAML (3 -> int, [13, 42] -> list, cuda -> str), with
    YAML 1.1's gap filled: ``1e-4`` and ``1e7`` are floats, not strings."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_value(str(v)) if isinstance(v, str) else v for v in value]
    return value
