"""The chapters' parameters: where the notebooks are, the defaults of their ``parameters`` cells,
and the checks every value passes before any compute (names, types, ranges, task names). The
command line, the publisher and the exercises read parameters through this module.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

__all__ = ["UsageError", "repo_root", "list_notebooks", "resolve_notebook", "notebook_parameters",
           "check_parameters", "parse_params", "add_run_arguments", "schema", "schema_table", "Parameter", "RULES", "TASK_PARAMETERS"]


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


def _kind(default) -> str:
    """The type of a parameter, in words, from its default."""
    if isinstance(default, bool):
        return "true or false"
    if default is None:
        return "number or null"
    if isinstance(default, (list, tuple)):
        inner = {_kind(v) for v in default}
        if len(inner) != 1:
            return "list"
        one = inner.pop()
        return "list of " + ("lists" + one[len("list"):] if one.startswith("list") else one + "s")
    return {int: "integer", float: "number", str: "text"}.get(type(default), type(default).__name__)


# ---------------------------------------------------------------------------- the rules
# Each rule: the names it governs, what it accepts (in words: the schema's "accepted" column), and its
# check, which raises UsageError naming the accepted values. A parameter with no rule here passes on its
# type alone; tests/test_parameters.py requires a rule (or a ft_/graft_ config field) for every parameter.
@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    accepted: str
    check: Callable[[str, object, dict], None]


def _known_tasks() -> set[str]:
    from . import tasks
    return set(tasks.list_tasks())


def _check_tasks(name: str, value, params: dict) -> None:
    known = _known_tasks()
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
    if name == "targets" and isinstance(params.get("sources"), (list, tuple)):
        from .chapters.ood import same_labels
        unmatched = [t for t in value if t in known and not any(s in known and same_labels(s, t)
                                                                 for s in params["sources"])]
        if unmatched:
            raise UsageError(f"parameter 'targets': target(s) {unmatched} share no source's classes; a target is "
                             f"scored with its source's prompt, so it needs the classes of one of {params['sources']}")


def _check_sequences(name: str, value, params: dict) -> None:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(q, (list, tuple)) for q in value):
        raise UsageError(f"parameter 'sequences' is a non-empty list of task lists, e.g. [['mr', 'trec', 'sms']], "
                         f"got {value!r}")
    for q in value:
        _check_tasks("sequence", q, params)
    if len({tuple(q) for q in value}) != len(value):
        raise UsageError(f"parameter 'sequences' repeats a sequence ({value!r}); give each once")


def _check_model(name: str, value, params: dict) -> None:
    from .models import check_model
    try:
        check_model(value)
    except ValueError as err:
        raise UsageError(f"parameter 'model': {err}") from err


def _check_device(name: str, value, params: dict) -> None:
    """cpu and auto run anywhere; cuda (or cuda:N) only where torch sees that GPU: refused here, before a kernel
    starts, rather than failing inside it."""
    from .models import resolve_device
    text = str(value)
    if text.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = text.partition(":")[2]
        if count == 0:
            build = "a CPU build of torch" if torch.version.cuda is None else "no CUDA device visible"
            raise UsageError(f"parameter 'device': {text!r} asks for a GPU, and this machine has none that torch can "
                             f"use ({build}); accepted here: cpu, auto")
        if index and (not index.isdigit() or int(index) >= count):
            raise UsageError(f"parameter 'device': {text!r}: this machine has {count} CUDA device(s); accepted here: "
                             f"cpu, auto, cuda, " + ", ".join(f"cuda:{i}" for i in range(count)))
        return
    if text != "auto":
        try:
            resolve_device(value)
        except (RuntimeError, ValueError) as err:
            raise UsageError(f"parameter 'device': {err}") from err


def _check_precision(name: str, value, params: dict) -> None:
    from .prompt import PRECISIONS
    if value not in PRECISIONS:
        raise UsageError(f"parameter 'precision': unknown precision {value!r}; accepted: {', '.join(PRECISIONS)}")


def _integer(low: int) -> Callable[[str, object, dict], None]:
    def check(name: str, value, params: dict) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UsageError(f"parameter {name!r} must be an integer ≥ {low}, got {value!r}")
    return check


def _check_seeds(name: str, value, params: dict) -> None:
    if value is None:
        return
    if not value or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value):
        raise UsageError(f"parameter {name!r} must be a non-empty list of integers ≥ 0, got {value!r}")
    if len(set(value)) != len(value):
        raise UsageError(f"parameter {name!r} repeats a seed ({value!r}): each data seed counts once in every interval; "
                         "give distinct seeds")


def _check_sparsity(name: str, value, params: dict) -> None:
    for v in value if isinstance(value, (list, tuple)) else [] if value is None else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise UsageError(f"parameter {name!r}: a sparsity is a fraction in (0, 1] of the graftable "
                             f"parameters, got {v!r}")
    if name == "claim_sparsity" and "sparsities" in params and value not in params["sparsities"]:
        raise UsageError(f"parameter 'claim_sparsity' ({value!r}) must be one of 'sparsities' "
                         f"({params['sparsities']!r}): the claim is checked on a graft that was computed")


RULES: tuple[Rule, ...] = (
    Rule(TASK_PARAMETERS,
         "registered task names (`skillgraft tasks`); a list is non-empty and names each task once; "
         "targets share a source's classes", _check_tasks),
    Rule(("sequences",), "a non-empty list of distinct task lists, each naming its tasks once", _check_sequences),
    Rule(("model",), "an embedded model's short name, a local folder, or a hub id (with internet)", _check_model),
    Rule(("device",), "cpu, cuda, cuda:N or auto", _check_device),
    Rule(("precision",), "fp32 or bf16", _check_precision),
    Rule(("k", "test_size", "max_length", "ece_bins"), "an integer ≥ 1", _integer(1)),
    Rule(("seed", "compare_seeds"), "an integer ≥ 0", _integer(0)),
    Rule(("seeds", "score_seeds"), "a non-empty list of distinct integers ≥ 0", _check_seeds),
    Rule(("sparsities", "claim_sparsity"), "fractions in (0, 1] of the graftable parameters; claim_sparsity one of "
         "sparsities", _check_sparsity),
)
CONFIG_PREFIXES = {"ft_": "FinetuneConfig", "graft_": "GraftConfig"}  # a field of the stage's config

# What the parameters every chapter shares do, where a chapter's parameter cell says nothing of its own.
SHARED_DOCS = {
    "model": "the model: embedded short name, local folder, or hub id such as roberta-base (with internet)",
    "device": "where torch runs: cpu, cuda or auto",
    "precision": "fp32, or bf16 autocast in training (fast only with native bf16 arithmetic)",
    "seeds": "data seeds: which k examples per class are drawn; each is one bootstrap group",
    "k": "training (and dev) examples per class: the paper's few-shot setting",
    "test_size": "fixed test examples per task, the same for every seed",
    "max_length": "tokens per prompt; long texts are cut, never the template",
    "claim_sparsity": "the graft's target size for the claim, as a fraction of the graftable parameters",
    "ft_optimizer": "fine-tuning's optimizer: sgd (the paper's) or adamw",
    "ft_lr": "fine-tuning's learning rate",
    "ft_steps": "fine-tuning steps of two-class tasks (more classes take proportionally more)",
    "ft_eval_every": "steps between dev checks; a check competes only if it fits the train set",
    "ft_batch_size": "examples per fine-tuning step",
    "ft_ties": "of dev checks with equal accuracy keep the later (the official trainer's rule) or the first",
    "ft_max_grad_norm": "clip the global gradient norm at this value (official: 1.0), or null for no clipping",
    "graft_lr": "the step size on the mask scores S",
    "graft_epochs": "gradient steps on S, each over the whole train set",
    "graft_sigmoid_bias": "b in sigma(S - b)",
    "graft_start": "the base patch the graft starts from: grow (the shipped script's) or refine",
}


def rule(name: str) -> Rule | None:
    return next((r for r in RULES if name in r.names), None)


def _check_values(params: dict) -> None:
    """Every rule on the parameters it governs, then the stage configs (``ft_*``, ``graft_*``) built."""
    for name, value in params.items():
        governing = rule(name)
        if governing is not None:
            governing.check(name, value, params)
    from .finetune import FinetuneConfig
    from .localization import GraftConfig

    for prefix, config, extra in (("ft_", FinetuneConfig, {}), ("graft_", GraftConfig, {"sparsity": 1e-4})):
        fields = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        try:
            config(**{**extra, **fields})
        except (TypeError, ValueError) as err:
            raise UsageError(f"parameters {prefix}*: {err}") from err


# ---------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Parameter:
    """One parameter of a chapter: its default, type and accepted values, and what it does."""

    name: str
    default: object
    kind: str
    accepted: str
    doc: str


def _comments(source: str) -> dict[str, str]:
    """The comment on each assignment's line of a parameter cell, by name (a comment on the lines just
    above an assignment without its own counts for it)."""
    import io
    import tokenize

    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    body, out = ast.parse(source).body, {}
    statements = {line for n in body for line in range(n.lineno, n.end_lineno + 1)}
    for node in body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            above, line = [], node.lineno - 1
            while line in by_line and line not in statements:  # a comment block of its own just above
                above.insert(0, by_line[line])
                line -= 1
            out[node.targets[0].id] = by_line.get(node.end_lineno) or " ".join(above)
    return out


def schema(path: Path) -> dict[str, Parameter]:
    """A chapter's parameters: names and defaults from its notebook's ``parameters`` cell, what each
    does from the cell's comments, the accepted values from :data:`RULES` (or the stage's config)."""
    import nbformat

    defaults = notebook_parameters(path)
    cell = next(c for c in nbformat.read(path, as_version=4).cells
                if "parameters" in c.get("metadata", {}).get("tags", []))
    docs = _comments(cell.source)
    out = {}
    for name, default in defaults.items():
        governing = rule(name)
        prefix = next((p for p in CONFIG_PREFIXES if name.startswith(p)), None)
        accepted = governing.accepted if governing else (
            f"a value {CONFIG_PREFIXES[prefix]} accepts for {name[len(prefix):]!r}" if prefix else
            "true or false" if isinstance(default, bool) else "any value of its type")
        out[name] = Parameter(name, default, _kind(default), accepted, docs.get(name) or SHARED_DOCS.get(name, ""))
    return out


def schema_table(path: Path, given: dict | None = None) -> str:
    """The schema as a Markdown table: name, default (and the value ``given``, if any), type, accepted
    values, what it does — what ``skillgraft parameters`` and the dry run print, and the rerunning page shows."""
    given = given or {}
    cell = lambda x: str(x).replace("|", "\\|")
    head = ["| name | default | " + ("this run | " if given else "") + "type | accepted | what it does |",
            "|---|---|" + ("---|" if given else "") + "---|---|---|"]
    rows = [f"| `{p.name}` | `{p.default!r}` | " + (f"{'`' + repr(given[p.name]) + '`' if p.name in given else ''} | "
                                                    if given else "")
            + f"{p.kind} | {cell(p.accepted)} | {cell(p.doc)} |" for p in schema(path).values()]
    return "\n".join(head + rows)


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


def add_run_arguments(parser) -> None:
    """The arguments of ``skillgraft run``, on an ``argparse`` parser: the command line's and the one
    the teaching page's exercises are read with (:mod:`skillgraft.chapters.exercises`), so that a
    command the page shows is one ``skillgraft run`` accepts."""
    parser.add_argument("notebook", help="e.g. 01 or 01_single_task_grafting")
    parser.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="a parameter; VALUE is read as YAML (3, 1e-4, [13, 42], cuda)")
    parser.add_argument("-f", "--file", action="append",
                        help="a YAML parameter file (e.g. configs/paper_scale/01_single_task_grafting.yaml)")
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--output", help="output notebook path (default: OUTPUT_DIR/NAME.ipynb)")
    parser.add_argument("--dry-run", action="store_true", help="check the parameters and stop")
    parser.add_argument("--plan", action="store_true",
                        help="with --dry-run: list each stored step, whether it is in the local store, published, or "
                             "to be computed, and estimate the time (loads the model)")


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
