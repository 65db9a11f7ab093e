"""The write path: decode and validate a batch, remember its Idempotency-Key, make it durable in the
write-ahead log, hold it in the live Arrow buffer, persist it as Parquet; and the producer client.
"""
