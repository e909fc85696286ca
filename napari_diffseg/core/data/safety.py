"""What every command checks before it writes a file: that it destroys nothing the user did not ask it to.

One policy for all commands (predict, project export, eval --csv, train): before the first byte is written,

- an output that is an input of the same run, or two outputs of one run with one name, are always refused;
- an output folder that is, or contains, a folder of the run's inputs or of the user's originals is refused;
- an existing entry of the output folder with the name stem of an output (any extension, any case: ``a.tif``
  collides with ``a.png`` and ``A.tif``) is refused, also when an earlier diffseg run wrote it (the message
  says so);

each unless the user gives ``--overwrite``. Names that come from data (a project manifest) are used as file names
only when they are one plain path component (:func:`child_path`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import json
from pathlib import Path
import zipfile

from ..errors import InputError
from .io import SOFTWARE_TAG, TIFF_SUFFIXES, ZARR_SUFFIX, name_key, name_stem, refuse_overwriting_inputs

CHECKPOINT_TAG = b"napari-diffseg"  # in the pickled payload of our checkpoints (core.method.checkpoint.FORMAT_TAG)

_FORBIDDEN_IN_NAMES = set('/\\:*?"<>|\0')


def _stem_key(path: Path) -> str:
    """A name stem as a case-insensitive file system compares it (``.zarr`` folders included)."""
    path = Path(path)
    return name_key(path.stem if path.suffix.lower() == ZARR_SUFFIX else name_stem(path))


def _is_inside(path: Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or path.is_relative_to(folder)


def written_by_diffseg(path: Path) -> bool:
    """Whether ``path`` is what an earlier diffseg run wrote: a TIFF with our Software tag, a checkpoint with our
    format tag, our losses table or model card, a zarr mask of ours, or a folder of such files. Reads headers only;
    False for anything unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES and path.is_file():
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return (tif.pages[0].software or "") == SOFTWARE_TAG
        if suffix == ".pt" and path.is_file():
            with zipfile.ZipFile(path) as archive:
                pickled = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                return pickled is not None and CHECKPOINT_TAG in archive.read(pickled)
        if path.name == "losses.csv" and path.is_file():
            with path.open() as handle:
                return handle.readline().startswith("step,stage,elapsed")
        if path.name == "model_card.json" and path.is_file():
            card = json.loads(path.read_text())
            return isinstance(card, dict) and {"config", "network"} <= card.keys()
        if suffix == ZARR_SUFFIX and path.is_dir():  # our completion mark, on a zarr v2 or v3 array, or on level 0
            # of the OME-Zarr labels of core.prediction.large.predict_file (<stem>.zarr/diffseg/0)
            for meta in (path / ".zattrs", path / "zarr.json", path / "diffseg" / "0" / "zarr.json"):
                if meta.is_file():
                    attrs = json.loads(meta.read_text())
                    if "diffseg" in (attrs.get("attributes") or {} if meta.name == "zarr.json" else attrs):
                        return True
            return False
        if path.is_dir():  # a folder we filled (pseudo_labels/): every file in it is ours
            return all(written_by_diffseg(entry) for entry in _existing_entries(path))
    except Exception:  # unreadable, foreign or corrupt: not ours
        return False
    return False


def _existing_entries(folder: Path) -> list[Path]:
    """The visible entries of ``folder`` (files and folders; hidden ones are our temporary files or not the user's
    data); [] when it does not exist."""
    try:
        return sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _refusal(entry: Path, output: Path, option: str, originals: str | None) -> str:
    whose = (f", in the folder of the {originals}" if originals
             else " (from an earlier diffseg run)" if written_by_diffseg(entry) else "")
    clash = "would replace" if entry.name == output.name else "would share its name stem with"
    return f"{output.name} {clash} {entry}{whose}; use --overwrite or another {option} (nothing was written)"


def refuse_unsafe_outputs(out: Path, outputs: Sequence[Path], *, overwrite: bool, inputs: Sequence[Path] = (),
                          originals: Mapping[str, Path] | None = None, option: str = "--out folder") -> None:
    """InputError before anything is written when writing ``outputs`` (files or folders directly in ``out``) would
    destroy or mix with files the user did not ask to replace (the policy in the module docstring).

    ``inputs``: the files this run reads (never written over, not even with ``overwrite``). ``originals``: folders
    of the user's originals by what they hold ("input images", "images the project was created from"); ``out``
    must be none of them, nor contain one, unless ``overwrite``.
    """
    out = Path(out)
    outputs = [Path(p) for p in outputs]
    refuse_overwriting_inputs(list(inputs), outputs, f"choose another {option} (--overwrite cannot allow this: "
                                                     "the run reads that file)")
    seen: dict[str, Path] = {}
    for output in outputs:
        key = name_key(output.name)
        if key in seen:
            raise InputError(f"two outputs of this run would both be {out / output.name} ({seen[key].name} and "
                             f"{output.name}, which a case-insensitive file system cannot tell apart); rename one "
                             "input")
        seen[key] = output
    if overwrite:
        return
    holds = next(((what, Path(folder)) for what, folder in (originals or {}).items()
                  if folder is not None and Path(folder).exists() and _is_inside(folder, out)), None)
    by_stem: dict[str, Path] = {}
    for output in outputs:
        by_stem.setdefault(_stem_key(output), output)
    for entry in _existing_entries(out):
        output = by_stem.get(_stem_key(entry))
        if output is not None:
            raise InputError(_refusal(entry, output, option, holds[0] if holds else None))
    if holds is not None:
        what, folder = holds
        where = "is the folder" if folder.resolve() == out.resolve() else f"contains {folder.name}, the folder"
        raise InputError(f"{option.split()[0]} {out} {where} of the {what}; use another {option} or --overwrite "
                         "(nothing was written)")


def is_plain_name(name: object) -> bool:
    """Whether ``name`` can be a file name as it is: one path component, no '..', not hidden, no surrounding
    blanks, no character that a file system refuses (``/ \\ : * ? " < > |``, control characters)."""
    return (isinstance(name, str) and bool(name) and name == name.strip() and name not in (".", "..")
            and not name.startswith(".") and not any(ch in _FORBIDDEN_IN_NAMES or ord(ch) < 32 for ch in name))


def child_path(folder: Path, name: str, suffix: str = "", what: str = "name") -> Path:
    """``folder / (name + suffix)`` for a ``name`` read from data (a manifest, a card); InputError unless the name
    is one plain path component (:func:`is_plain_name`), so that the result lies directly in ``folder``."""
    if not is_plain_name(name):
        raise InputError(f"{what} {name!r} is not a plain file name (edited by hand?): it could be written outside "
                         f"{folder}; nothing was written")
    return Path(folder) / f"{name}{suffix}"


def refuse_name_collisions(names: Iterable[tuple[str, Path]], what: str = "images") -> None:
    """InputError when two sources (``(key, source path)``, key = the name each would be stored or written under)
    would end as one name on a case-insensitive file system."""
    seen: dict[str, Path] = {}
    for key, source in names:
        folded = name_key(key)
        if folded in seen:
            raise InputError(f"the {what} {seen[folded].name} and {Path(source).name} would both be named "
                             f"'{key}' (names that differ only in case, spaces or punctuation); rename one of them")
        seen[folded] = Path(source)
