"""Every example in lrdnb's docstrings runs and prints what it says (doctest; ``+SKIP`` marks the
few that need downloads or minutes)."""
import doctest
import importlib
import pkgutil

import pytest

import lrdnb

MODULES = sorted(m.name for m in pkgutil.walk_packages(lrdnb.__path__, "lrdnb.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples of {name} failed (output above)"
