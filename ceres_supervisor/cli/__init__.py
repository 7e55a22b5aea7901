"""The command line: the parser and subcommands (`commands`), talking to a running daemon
(`client`), the one-shot commands that look once (`oneshot`), backup and restore (`backups`), what
`plan` and `upgrade status` say of an upgrade (`upgrades`), and bash completion (`completion`).
The top of the layers: may import every other folder.
"""
