"""Fixtures every test folder may use: the loopback S3 server and its buckets (tests/s3.py)."""

pytest_plugins = ("tests.s3",)
