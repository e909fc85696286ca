"""Data: image and mask I/O, the training set in memory, the working scale, metrics, write-safety checks."""
