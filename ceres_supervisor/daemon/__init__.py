"""The daemon: its lifecycle (`app`), the reconcile loop (`loop`), the store's session beside the
loop (`storesync`), the staged stop within one deadline (`shutdown`), and reloading the file
(`reloading`). May import every folder but `cli`.
"""
