"""`ray job submit` entry points."""
