"""Fixtures for upstream providers: the mock upstream server."""
