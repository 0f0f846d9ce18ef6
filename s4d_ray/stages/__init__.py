"""Stage wrappers: one contract per stage, independent of the backend."""
