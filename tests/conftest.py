import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from processes import SESSION_MARK, reap_orphans  # noqa: E402


def pytest_configure(config):
    # before any test starts a process: every child (and its children) inherits the mark
    os.environ[SESSION_MARK] = uuid.uuid4().hex


@pytest.fixture(scope="session", autouse=True)
def no_orphan_processes():
    """Fails the session if a process started by a test outlives it (listed by pid and
    command line, then killed). Torn down last: after every other fixture has stopped what it
    started (servers, browsers)."""
    yield
    left = reap_orphans(os.environ[SESSION_MARK])
    if left:
        pytest.fail(
            "processes started by the tests outlived the session (now killed):\n"
            + "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def search_run(tmp_path_factory):
    """A tiny run trained on two synthetic composers, with its index (read-only: copy it
    with ``search_run_copy`` to change it)."""
    from search_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("search"))


@pytest.fixture
def search_run_copy(search_run, tmp_path):
    return shutil.copytree(search_run, tmp_path / "run")


@pytest.fixture(autouse=True)
def close_models(request, monkeypatch):
    """Every ``Harmonixr`` a test loads (module-scoped fixtures close their own) has its parser
    processes stopped when the test ends, so none waits for the garbage collector."""
    if "harmonixr.api" not in sys.modules:  # the test never loaded the API: nothing to close
        yield
        return
    from harmonixr.api import Harmonixr

    opened = []
    load = Harmonixr.load.__func__

    def tracked(cls, *args, **kwargs):
        hx = load(cls, *args, **kwargs)
        opened.append(hx)
        return hx

    monkeypatch.setattr(Harmonixr, "load", classmethod(tracked))
    yield
    for hx in opened:
        hx.close()
