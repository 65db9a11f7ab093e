"""Many nodes as one: the composition root of a node, the shard map, replication, hints,
scatter-gather queries, anti-entropy and rebalancing. A single node is a cluster of one.
"""
