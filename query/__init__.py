"""Answering: exact count / sum / top-k over rollups, parts and the live buffer in one DuckDB query;
approximate answers from sketches; read-only SQL in a sandbox; time ranges.
"""
