"""Layering promises that a refactor could silently break."""

import ast
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HEAVY = "{'torch', 'transformers', 'diffusers'}"
ROOT = Path(__file__).resolve().parent.parent
# The project's own top-level packages: the import graph is drawn between their modules.
PACKAGES = ("api", "workers", "common", "db", "models", "scripts", "bench")


# A fresh interpreter importing the whole app takes seconds: these run in `make test`, not in
# the fast lane.
SLOW = pytest.mark.slow


def in_a_fresh_interpreter(code: str) -> None:
    """Run `code` in a new Python process (what it imports is then all its own); it must pass."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@SLOW
def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys, api.main\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY})\n"
        "assert not heavy, heavy\n"
    )
    in_a_fresh_interpreter(code)


@SLOW
def test_a_worker_starts_without_torch_so_cuda_is_touched_only_where_models_run() -> None:
    """Models load lazily in the task threads of the process that runs them: nothing at start
    (or in a parent that could fork) imports torch, let alone initialises CUDA."""
    code = (
        "import sys, workers.celery_app\n"
        "workers.celery_app.app.loader.import_default_modules()\n"
        "import workers.batch_run, workers.runtime, workers.sweeper, workers.leases\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY})\n"
        "assert not heavy, heavy\n"
    )
    in_a_fresh_interpreter(code)


@SLOW
def test_the_celery_app_only_configures_and_a_worker_start_connects_what_starts_threads() -> None:
    """Importing workers.celery_app starts no thread; the handlers that build the runtime and
    start the sweeper or dispatcher (workers/lifecycle.py) are connected by the modules a worker
    imports before it sends worker_init (Celery's loader.init_worker)."""
    code = (
        "import threading, workers.celery_app as c\n"
        "from celery.signals import worker_init, worker_ready\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'workers.lifecycle' not in __import__('sys').modules\n"
        "c.app.loader.init_worker()\n"
        "from workers import lifecycle\n"
        "connected = [r[1]() for r in worker_init.receivers + worker_ready.receivers]\n"
        "wanted = [lifecycle._build_runtime, lifecycle._serve_metrics,\n"
        "          lifecycle._start_background_threads]\n"
        "assert all(f in connected for f in wanted), connected\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    in_a_fresh_interpreter(code)


def test_the_workers_serve_the_contract_the_api_sends_to() -> None:
    """Both sides take the names from common/contract.py; what is left to check is that the
    workers register the task with the arguments the API sends, and that both wait as long
    before a message comes back."""
    from api import queue
    from api.settings import get_api_settings
    from common.contract import RUN_PREDICTION_TASK
    from workers import celery_app

    celery_app.app.loader.import_default_modules()  # what a worker does at start
    assert RUN_PREDICTION_TASK in celery_app.app.tasks
    task = celery_app.app.tasks[RUN_PREDICTION_TASK]
    assert list(inspect.signature(task.run).parameters) == ["prediction_ids", "version_id"]
    assert list(inspect.signature(queue.Publisher.submit).parameters) == [
        "self",
        "prediction_id",
        "version_id",
        "hardware",
    ]
    worker_timeout = celery_app.app.conf.broker_transport_options["visibility_timeout"]
    api_timeout = queue.get_client().conf.broker_transport_options["visibility_timeout"]
    assert worker_timeout == api_timeout == get_api_settings().broker_visibility_timeout_s
    assert celery_app.app.conf.task_time_limit < worker_timeout


def test_the_contract_is_written_once() -> None:
    """Task names, queue names and the event stream key are spelled in common/contract.py
    only: api/ and workers/ import them (a second copy could drift from the first)."""
    contract = ROOT / "common" / "contract.py"
    spellings = ('"quern:events:', '"quern.predictions.run"', '"quern.webhooks.deliver"',
                 'f"predictions.')  # fmt: skip
    text = contract.read_text()
    assert all(spelling in text for spelling in spellings)
    for package in ("api", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not [s for s in spellings if s in text], path
    assert not (ROOT / "workers" / "contract.py").exists()


def test_api_and_workers_share_common_and_never_import_each_other() -> None:
    """Every import counts here, those inside functions too. common/ is what both sides share:
    it may use db/, never api/ or workers/."""
    forbidden = {
        "api": {"workers"},
        "workers": {"api"},
        "common": {"api", "workers"},
        "db": {"api", "workers"},
        "models": {"api", "workers", "db", "common"},
    }
    for package, others in forbidden.items():
        for path in (ROOT / package).rglob("*.py"):
            imported = {name.split(".")[0] for name in _imports(path, everywhere=True)}
            assert not imported & others, (path, imported & others)
    for package in ("api", "workers"):
        assert any(
            "common" in {n.split(".")[0] for n in _imports(path, everywhere=True)}
            for path in (ROOT / package).rglob("*.py")
        ), package


def test_no_import_cycles() -> None:
    """No two of the project's modules import each other, directly or through others.

    Counted: the imports that run when a module is imported, at its top level (under `if`,
    `try` and `with` too). Not counted: those under `if TYPE_CHECKING:`, which never run, and
    those inside functions, which run only when called, once every module is loaded: that is
    how a worker defers torch (workers/runtime.py) and how a type hint names a module that
    imports this one. A cycle at the top level is one where some import order finds a module
    half-initialised."""
    graph = _import_graph()
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, cycles


@SLOW
def test_a_webhooks_worker_never_imports_torch() -> None:
    """It runs the workers' Celery app (every task module) but only delivers webhooks."""
    code = (
        "import sys\n"
        "from workers import celery_app\n"
        "celery_app.app.loader.import_default_modules()\n"
        "from workers.webhooks import delivery, dispatcher\n"
        "heavy = {'torch', 'transformers', 'diffusers'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
    )
    in_a_fresh_interpreter(code)


def test_the_tests_live_in_folders_named_for_what_they_test() -> None:
    """tests/api, db, models, workers mirror the code; tests/system runs the whole stack;
    tests/ops the deployment files and processes; tests/support is shared by them all."""
    top = {path.name for path in Path(__file__).parent.glob("*.py")}
    assert top <= {"__init__.py", "conftest.py", "test_architecture.py"}, top


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, *, everywhere: bool = False) -> set[str]:
    """What `path` imports: each `import a.b` as "a.b", each `from a import b` as "a" and
    "a.b" (b may be a module). At the top level (outside TYPE_CHECKING) unless `everywhere`."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()

    def add(node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)

    def top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    yield from top_level(node.body)
                yield from top_level(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, *(h.body for h in node.handlers), node.orelse,
                              node.finalbody):  # fmt: skip
                    yield from top_level(block)
            elif isinstance(node, ast.With):
                yield from top_level(node.body)
            else:
                yield node

    nodes = ast.walk(tree) if everywhere else top_level(tree.body)
    for node in nodes:
        if isinstance(node, ast.stmt):
            add(node)
    return found


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at its top level."""
    paths = {_module_name(path): path for p in PACKAGES for path in (ROOT / p).rglob("*.py")}

    def known(name: str) -> str | None:  # a.b.C (a class) is in a.b
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = {known(name) for name in _imports(path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components
