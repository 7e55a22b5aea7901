"""Operations an operator asks for: pauses (`pauses`), planned and rolling restarts (`restarts`),
upgrades to the file's release (`upgrades`, each node's step in `upgrade_steps`), backups of meta's
etcd and their schedule (`backups`), restores (`restores`, on a stopped cluster).

Pauses, restarts and upgrades reach the loop through the planner's controls; none stops a
container itself.
May import: `model`, `desired`, `decisions`, `adapters`, `cluster`.
"""
