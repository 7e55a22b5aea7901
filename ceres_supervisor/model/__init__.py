"""The model: pure data that every other folder imports, and that imports nothing of ours.

The desired-state file's pydantic models (`spec`), hosts, machines and listen addresses
(`addresses`), the frozen snapshots of what runs
(`observed`), the facts that differ between server releases (`versions`), backup manifests and
where meta keeps its etcd (`backups`), durations and the exception hierarchy (`errors`). No I/O, no
asyncio, no third-party client.
"""
