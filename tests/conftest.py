import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def search_run(tmp_path_factory):
    """A tiny run trained on two synthetic composers, with its index (read-only: copy it
    with ``search_run_copy`` to change it)."""
    from search_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("search"))


@pytest.fixture
def search_run_copy(search_run, tmp_path):
    return shutil.copytree(search_run, tmp_path / "run")
