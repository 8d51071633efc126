"""imagefs: a Docker Engine's images as a directory tree (FUSE).

Layers, each knowing only the ones below it:

- `engine`      the async Engine API client (addresses, TLS, versions, errors)
- `references`  the reference grammar and the reference <-> path rules
- `catalog`     which images exist; caches; the one invalidation point
- `events`      following the engine's events for coherence
- `controls`    control-file commands (tag, delete, prune)
- `exports`     export.tar / all.tar: one spooled export per image
- `nodes`       the tree: what each path is, lists, stats and opens
- `fs`          the thin pyfuse3 adapter (inodes, errnos)
- `daemon`/`cli` the mount's lifetime and the command line
"""

__version__ = "0.1.0"
