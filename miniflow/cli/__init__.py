"""The command-line face: `miniflow` and its commands, the daemons they start, and the
operations they share with other faces (`operations`, `wiring`).

Nothing below the faces imports this package (checked by `lint-imports`).
"""
