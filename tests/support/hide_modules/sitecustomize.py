"""Make Python believe some packages are not installed: DATIVO_TEST_HIDE=psycopg,pytest.

Put this folder on PYTHONPATH of a subprocess. ``sys.modules[name] = None`` is how
CPython marks an import as blocked: ``import name`` raises ModuleNotFoundError and
``importlib.util.find_spec(name)`` returns None, exactly as when it is absent. It
stands in for a second virtual environment without the extra (CI's newcomer step
checks that one for real).
"""

import os
import sys

for _name in filter(None, os.environ.get("DATIVO_TEST_HIDE", "").split(",")):
    sys.modules[_name] = None  # type: ignore[assignment]
