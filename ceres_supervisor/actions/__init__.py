"""Actions: carrying out what the planner decided (create, start, stop, remove) through the engine
(`executor`), and the preflight of images (`images`: present on this machine, pulled when asked).

The only folder with side effects on containers. May import: `model`, `desired`, `adapters`,
`decisions`.
"""
