"""The export spool: the cache directory (`store`), one export's states (`export`), the exports by
content (`exports`), remembered sizes (`sizes`) and reading spool files (`reader`). Nothing here
knows nodes or FUSE."""
