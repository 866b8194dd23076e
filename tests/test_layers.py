"""The import graph of the project's own modules (every import, also those inside
functions): no circles, and nothing points back up. Loaders sit at the bottom, then
the models (the served model imports no training code), then the machinery below the
tasks (pipeline/core: BELOW_TASKS), then the tasks (one package each, knowing nothing
of the others), then the machinery that composes them (the rest of pipeline/core),
then the steps: the modules at pipeline/'s root, and only they."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("data_loaders", "models", "pipeline")
STEPS = {f"pipeline.{s}" for s in ("main", "prepare", "train", "evaluate", "register",
                                   "predict", "sweep", "score_spark")}
BELOW_TASKS = {f"pipeline.core.{m}" for m in ("params", "trainer", "checkpoint", "signals",
                                              "distributed", "metrics", "plots", "horizon")
               } | {"pipeline.core"}  # the package itself: a docstring


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The module an import names: `from ..core import x` in pipeline.tasks.prices.risk
    is pipeline.core."""
    if not node.level:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {m: set() for m in mods}
    for name, path in mods.items():
        for node in runtime_nodes(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = absolute(node, name, path)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                while t and t not in mods:  # `from pipeline import cli` -> pipeline.core.cli
                    t = t.rpartition(".")[0]
                if t and t != name and (t != name.rpartition(".")[0] or t not in mods):
                    edges[name].add(t)
    return edges


def test_no_import_circles():
    edges, state, stack = graph(), {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges[m]):
            assert state.get(n) != "open", " -> ".join(stack[stack.index(n):] + [n])
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_nothing_points_back_up():
    for name, targets in graph().items():
        for t in targets:
            if name.startswith("data_loaders"):
                assert t.startswith("data_loaders"), f"{name} imports {t}"
            if name.startswith("models"):
                assert not t.startswith("pipeline"), f"{name} imports {t}"
            if name.startswith("pipeline") and name not in STEPS:
                assert t not in STEPS, f"{name} imports the step {t}"
            if name in BELOW_TASKS:
                assert not t.startswith("pipeline.") or t in BELOW_TASKS, f"{name} imports {t}"
            if name.startswith("pipeline.tasks"):
                assert not t.startswith("pipeline.core") or t in BELOW_TASKS, \
                    f"{name} imports {t}, which sits above the tasks"
                # a task's package knows nothing of another task's
                assert task_package(t) in (None, task_package(name)), f"{name} imports {t}"


def task_package(module: str) -> str | None:
    """pipeline.tasks.prices.risk -> pipeline.tasks.prices; None outside a task package."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["pipeline", "tasks"] and len(parts) > 3 \
        or (len(parts) == 3 and (ROOT / "pipeline/tasks" / parts[2]).is_dir()) else None


def test_the_steps_are_pipeline_s_root_and_each_task_has_a_package():
    root = {f"pipeline.{p.stem}" for p in (ROOT / "pipeline").glob("*.py")} - {"pipeline.__init__"}
    assert root == STEPS, f"not steps at pipeline/'s root: {sorted(root ^ STEPS)}"
    from pipeline.core.params import TASKS
    for name, module in TASKS.items():
        assert task_package(module), f"task {name}: {module} is not in a package of its own"
    assert len({task_package(m) for m in TASKS.values()}) == 2  # prices; speech (both)
