"""Import this checkout as the package ``spacetime`` even where it is not pip-installed (shared by the benchmarks).

``PRELUDE`` is the same code as text, for benchmarks that measure in fresh subprocesses.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = f"""
import importlib.util, sys
try:
    import spacetime
except ImportError:
    _s = importlib.util.spec_from_file_location("spacetime", {str(ROOT / "__init__.py")!r},
                                                submodule_search_locations=[{str(ROOT)!r}])
    _m = importlib.util.module_from_spec(_s); sys.modules["spacetime"] = _m; _s.loader.exec_module(_m)
"""

exec(PRELUDE)
