"""The cluster across machines (several agents, one etcd): what this agent publishes and reads.

`coordinator` keeps the agent's lease, publishes its nodes and watches the others; `writes` (a part
of it) takes disruption slots by transaction, holds cluster-wide claims and writes pause records;
`view` is the store's content as this agent sees it, and who this agent is (pure).
May import: `model`, `desired`, `decisions`, `adapters`.
"""
