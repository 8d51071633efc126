"""The thin pyfuse3 adapter: inode numbers for nodes (`inodes`), the kernel's invalidation (`kernel`),
the request handlers (`operations`). It translates and holds no Docker knowledge."""
