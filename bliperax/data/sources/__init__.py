"""Input formats for tools/build_shards.py: one reader module per format.

`READERS[name]` is a module with `read(path, ReaderOptions)` yielding drafts
and skips, and `SUFFIXES`, the file endings a folder of that format holds.
"""
from bliperax.data.sources import interleaved
from bliperax.data.sources import llava
from bliperax.data.sources import parquet
from bliperax.data.sources import preference
from bliperax.data.sources import vlguard
from bliperax.data.sources import webdataset

READERS = {
    "webdataset": webdataset,
    "parquet": parquet,
    "llava": llava,
    "interleaved": interleaved,
    "preference": preference,
    "vlguard": vlguard,
}
