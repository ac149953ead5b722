import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Each test session gets its own cache folder (safety exemplar embeddings and probes), so the policies tests
    write never leave files in the user's cache and the cold path (embed, then save) runs every time."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SPACETIME_CACHE_DIR", str(tmp_path_factory.mktemp("spacetime-cache")))
    yield
    mp.undo()
