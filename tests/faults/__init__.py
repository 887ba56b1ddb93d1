"""The fault suite: see conftest.py and test_faults.py."""
