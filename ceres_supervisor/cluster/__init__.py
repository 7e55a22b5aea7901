"""The cluster across machines (several agents, one etcd): what this agent publishes and reads.

`coordinator` keeps the agent's lease, publishes its nodes, watches the others and takes
disruption slots by transaction; `view` is the store's content as this agent sees it (pure).
May import: `model`, `desired`, `decisions`, `adapters`.
"""
