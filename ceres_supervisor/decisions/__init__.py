"""Decisions: pure functions of desired state, observed state, memory and time.

`planning` (what to do this cycle), `budget` (may a node be stopped by choice now), `backoff`
(when to restart after a failure), `leases` (does a CeresDB node hold its shards, or only wait),
`backups` (does a backup fit the file, which old ones go, when the next is due), `upgrades` (which
release pairs can be upgraded and how, the steps of one, the preflight of images).
May import: `model`, `desired.containers`. No I/O of any kind: no asyncio, no aiohttp, no docker,
no files; each function is table-tested.
"""
