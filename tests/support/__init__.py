"""What the tests need from the studies (studies/): measurement helpers both use, owned here.

Tests import it as ``support.<module>`` (tests/ is on ``sys.path`` through tests/conftest.py);
studies, run from the repository, as ``tests.support.<module>``.
"""
