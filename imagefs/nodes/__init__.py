"""The tree of SPEC §1 as nodes that know no FUSE: the protocol (`base`), the directories (`images`),
the files (`documents`, `controls`, `exports`) and resolving a path one component at a time (`tree`)."""
