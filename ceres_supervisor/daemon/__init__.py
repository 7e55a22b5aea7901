"""The daemon: its lifecycle and reconcile loop (`app`), and reloading the file (`reloading`).
May import every folder but `cli`.
"""
