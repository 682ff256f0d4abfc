"""The test suite, one package per layer (``tests/hub/``, ``tests/client/``, ...).

Packages (not a flat folder on ``sys.path``) so that every ``conftest.py`` and test module has a
unique dotted name for both pytest (its default ``prepend`` import mode puts the repository root on
``sys.path``) and mypy (no duplicate ``conftest`` modules); support code is imported as
``tests.support.<module>``.
"""
