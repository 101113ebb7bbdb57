"""A pytest plugin for `make mutate`: credit what a module- or session-scoped fixture calls to every test using it.

mutmut 3 maps each mutated function to the tests that call it in a stats run, and tries a mutant against only
those tests. A wider-scoped fixture is built once, during the setup of the first test that asks for it, so without
this plugin the functions it calls (for example a whole law comparison computed in a module fixture) are credited
to that first test alone; the tests that check the fixture's result are never run against those mutants, and the
mutants survive although the suite would kill them.

During mutmut's stats run (MUTANT_UNDER_TEST=stats) this records the trampoline hits made while each non-function
fixture is set up, and adds them to every test that uses that fixture. Outside the stats run it does nothing.
Loaded with `-p scripts.mutmut_fixture_stats` from pyproject's [tool.mutmut] pytest_add_cli_args.
"""

from __future__ import annotations

import os

import pytest

_hits: dict[int, set[str]] = {}   # id(FixtureDef) -> functions its setup called


def _stats_run() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if not _stats_run() or fixturedef.scope == "function":
        yield
        return
    from mutmut.state import state  # noqa: PLC0415 - only inside mutmut

    outer = state()._stats
    state()._stats = set()
    try:
        yield
    finally:
        inner = state()._stats
        _hits.setdefault(id(fixturedef), set()).update(inner)
        state()._stats = outer | inner


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    if not _stats_run() or not _hits:
        return
    from mutmut.state import state  # noqa: PLC0415

    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            state()._stats.update(_hits.get(id(fixturedef), ()))
