"""Actions: carrying out what the planner decided (create, start, stop, remove) through the engine.

The only folder with side effects on containers. May import: `model`, `desired`, `adapters`,
`decisions`.
"""
