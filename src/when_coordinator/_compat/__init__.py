"""Version-dependent reach-ins into other libraries, one small module per library.

A name a library does not offer publicly (or has renamed across the releases this package
supports) is used here and nowhere else, so that an upgrade that breaks it breaks one module,
whose test (``tests/otel/test_compat.py``, ``tests/client/test_compat_websockets.py``,
``tests/hub/test_compat_direct.py``) runs against the lowest and the highest versions declared.
``asyncio.py`` is the same for the standard library across the Pythons supported
(``tests/hub/test_compat_asyncio.py``).
"""
