"""The command line: the grammar and `main` (`commands`) with the parts every command shares
(`grammar`), the exit codes (`exits`), talking to a
running daemon (`client`), what is printed for people (`tables`), the commands that work on this
machine (`local`) and those that ask a daemon (`remote`), the one-shot plan (`oneshot`), backup
and restore (`backups`), what `plan` and `upgrade status` say of an upgrade (`upgrades`), and bash
completion (`completion`). The top of the layers: may import every other folder.
"""
