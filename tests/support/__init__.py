"""Test support: real server processes (``process``) and a fault-injecting proxy (``faultproxy``).

Imported by tests and conftests as ``tests.support.*``; nothing here is shipped.
"""
