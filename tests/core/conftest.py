import pytest

pytestmark = pytest.mark.core


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/core" in str(item.fspath):
            item.add_marker(pytest.mark.core)
