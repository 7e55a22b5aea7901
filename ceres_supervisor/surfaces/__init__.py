"""What people and programs see: the HTTP API, the operator's routes and the upgrade's
(`upgrade_routes`), the status page,
`/metrics`, and the documents they serve (`status_document`, `cluster_document`), built from the
one `snapshot` the loop publishes each cycle (`reports` derives the per-cycle ones).
May import everything below the daemon; the API depends on the daemon only through the small
`api.Daemon` interface, which the daemon implements.
"""
