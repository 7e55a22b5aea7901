"""Operations an operator asks for: pauses (`pauses`), planned and rolling restarts (`restarts`).

Each reaches the loop through the planner's controls; none stops a container itself.
May import: `model`, `desired`, `decisions`, `adapters`, `cluster`.
"""
