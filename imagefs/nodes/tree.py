"""The tree of one mount: its root, paths resolved one component at a time, what a change touches."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import Change
from ..references import TreePath
from .base import Context, Dir, Node
from .images import IDS, RESERVED, Root


@dataclass(frozen=True)
class Invalidation:
    """What the kernel must forget: every name at or below `trees`, and the attributes of `nodes`."""

    trees: frozenset[TreePath]
    nodes: frozenset[TreePath]


class Tree:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.root = Root(ctx)
        # Whether any node kind here carries extended attributes, or acts when a file is closed. While
        # none does, the adapter answers ENOSYS once and the kernel stops asking: otherwise `ls -l`
        # asks getxattr twice per entry (ACLs), and every close(2) costs a FLUSH round trip.
        self.xattrs = False
        self.flushes = ctx.uploads is not None and not ctx.read_only  # an upload commits in close(2)

    @property
    def read_only(self) -> bool:
        return self.ctx.read_only

    @property
    def entry_ttl(self) -> float:
        """How long the kernel may trust a name or an attribute it was given."""
        return self.ctx.catalog.ttl

    async def resolve(self, path: TreePath) -> Node | None:
        node: Node | None = self.root
        for name in path:
            if not isinstance(node, Dir):
                return None
            node = await node.lookup(name)
        return node



def affected(change: Change) -> Invalidation:
    """For a catalog change: subtrees whose names lead elsewhere now, and nodes whose attributes changed."""
    new = change.new
    trees: set[TreePath] = set()
    nodes: set[TreePath] = {(), (RESERVED,), (RESERVED, IDS)}
    for ref in change.refs:
        path = tuple(ref.split("/"))
        trees.add(path)
        for depth in range(1, len(path)):  # namespaces that emptied, or whose newest image changed
            prefix = path[:depth]
            exists = new.is_namespace(prefix) or new.image_at(prefix) is not None
            (nodes if exists else trees).add(prefix)
    if change.refs:
        trees.add((RESERVED, "all.tar"))  # every tagged reference is in it: another content now
    for image_id in change.ids:
        trees.add((RESERVED, IDS, image_id))
        for image in (change.old.images.get(image_id), new.images.get(image_id)):
            trees.update(tuple(ref.split("/")) for ref in (image.tags + image.digests if image else ()))
    return Invalidation(frozenset(trees), frozenset(nodes))
