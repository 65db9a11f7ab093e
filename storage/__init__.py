"""The ground floor: the event schema, hourly Parquet partitions with their rollups, the manifest.

Everything here is plain files and pure functions over Arrow tables; nothing knows about HTTP,
peers or the write-ahead log.
"""
