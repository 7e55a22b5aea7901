"""The stand-ins as a library, shared by tests/ and bench/: build the stand-in images
(`emulator`), start them and inject faults (`standins`), read etcd and wait for conditions
(`helpers`), and count what Docker did (`dockerevents`). Not part of the installed package.
"""
