"""The desired state: from the file to the containers it implies.

Loading and validating the file (`loading`, `rules`, the servers' own config schemas in
`serverschema`), resolving secrets, rendering each node's TOML (`rendering`), the container each
node must run (`containers`), which nodes are this machine's (`locality`), writing rendered files
atomically (`files`), the static-topology record (`topology`) and the identity marker of each data
directory (`identity`).
May import: `model`. Reads files and the machine's addresses; never Docker, etcd or HTTP.
"""
