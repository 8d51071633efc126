"""The files inside every image: an index of its export, the merged rootfs and its layers."""
