"""Observation: what runs, as one frozen `Observation` per cycle.

`probes` checks health, readiness, the meta leader and the shard locks over HTTP; `observer`
lists the containers through the Docker adapter and joins them with the probes' latest results.
May import: `model`, `desired`, `decisions`, `adapters`. Reads, never changes anything.
"""
