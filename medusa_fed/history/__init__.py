"""history: the Git-like branch history of runs (``medusa log / show / diff / merge / export``).

A SQLite database of objects (bases, ownership maps, branches, merges, runs) over
content-addressed safetensors blobs; runs are imported into it when they end.
"""
