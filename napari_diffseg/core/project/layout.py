"""A project folder's layout on disk: the manifest's file name, the sub-folders and the meta keys that more than
one part of the store reads (docs/project-format.md describes the format)."""

DB_NAME = "project.sqlite"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
PSEUDO_DIR = "pseudo"
CHECKPOINTS_DIR = "checkpoints"
ORIGINAL_NAME_KEY = "original_name:"  # meta key prefix: the name the user gave an image the project had to change
SPACING_KEY = "spacing:"  # meta key prefix: an image's voxel size per spatial axis (JSON), when it was given
SOURCES_KEY = "sources"  # meta key: the folders a project was created from (JSON), which export never writes into


def is_path_like(name: str) -> bool:
    """A name that no file could have (a path): never recorded as an image's original name, and refused when
    found recorded (the manifest was edited)."""
    return name in (".", "..") or "/" in name or "\0" in name
