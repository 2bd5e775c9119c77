"""The browser test runs only when asked for by path (`make test-book` = `pytest tests/book`).

`make test-unit` collects all of tests/; there the browser test is skipped, since it needs a built book
(`make book-stored`) and Debian's chromium, which only `make test-book` provides.
"""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        return
    skip = pytest.mark.skip(reason="the browser test of the built book runs with `make test-book`")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)
