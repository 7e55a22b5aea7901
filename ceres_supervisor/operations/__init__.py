"""Operations an operator asks for: pauses (`pauses`), planned and rolling restarts (`restarts`),
backups of meta's etcd and their schedule (`backups`), restores (`restores`, on a stopped cluster).

Pauses and restarts reach the loop through the planner's controls; none stops a container itself.
May import: `model`, `desired`, `decisions`, `adapters`, `cluster`.
"""
