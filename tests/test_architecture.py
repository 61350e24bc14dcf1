"""Layering promises that a refactor could silently break."""

import inspect
import subprocess
import sys
from pathlib import Path

HEAVY = "{'torch', 'transformers', 'diffusers'}"


def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys, api.main\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_worker_starts_without_torch_so_cuda_is_touched_only_where_models_run() -> None:
    """Models load lazily in the task threads of the process that runs them: nothing at start
    (or in a parent that could fork) imports torch, let alone initialises CUDA."""
    code = (
        "import sys, workers.celery_app\n"
        "workers.celery_app.app.loader.import_default_modules()\n"
        "import workers.batches, workers.runtime, workers.sweeper, workers.leases\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_api_and_workers_agree_on_task_name_queue_and_visibility_timeout() -> None:
    from api import queue
    from api.settings import get_api_settings
    from workers import celery_app, contract

    celery_app.app.loader.import_default_modules()  # what a worker does at start
    assert queue.RUN_PREDICTION_TASK == contract.RUN_PREDICTION_TASK
    assert queue.MAX_IDS_PER_MESSAGE == contract.MAX_IDS_PER_MESSAGE
    for hardware in ("cpu", "gpu"):
        assert queue.prediction_queue(hardware) == contract.prediction_queue(hardware)
    assert queue.RUN_PREDICTION_TASK in celery_app.app.tasks
    task = celery_app.app.tasks[queue.RUN_PREDICTION_TASK]
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


def test_api_and_workers_never_import_each_other() -> None:
    from pathlib import Path

    for package, forbidden in (("api", "workers"), ("workers", "api"), ("db", "api"),
                               ("db", "workers"), ("models", "api"), ("models", "workers"),
                               ("models", "db")):  # fmt: skip
        for path in Path(package).rglob("*.py"):
            text = path.read_text()
            assert f"from {forbidden}" not in text and f"import {forbidden}" not in text, path


def test_api_and_workers_agree_on_the_event_stream_key() -> None:
    """Each side names a prediction's Redis Stream itself (they never import each other)."""
    from api.services.streams import events_key
    from workers import events

    assert events_key("abc") == events.key("abc") == "quern:events:abc"


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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_tests_live_in_folders_named_for_what_they_test() -> None:
    """tests/api, db, models, workers mirror the code; tests/system runs the whole stack;
    tests/ops the deployment files and processes; tests/support is shared by them all."""
    top = {path.name for path in Path(__file__).parent.glob("*.py")}
    assert top <= {"__init__.py", "conftest.py", "test_architecture.py"}, top
