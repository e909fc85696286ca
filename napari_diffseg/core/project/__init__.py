"""Projects: the on-disk store (TIFF + SQLite), its locks and the human-in-the-loop rounds."""
