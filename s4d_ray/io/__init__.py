"""Storage and formats: fsspec helpers, clip ids, the Stereo4D npz record, video decoding and
encoding, and the engine's writers (npz per clip, Parquet shards, failures table)."""
