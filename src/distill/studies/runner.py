"""The study runner's side of `distill study`: a study file (params/studies/) or a study
folder read into its notebook's params section (distill.studies.params), every key
checked before a folder exists. distill.pipeline then executes the notebook.

A study file is flat: its `study:` key names the study (provenance when absent) and
every other key is one of that study's params. A study folder records its study and its
parameters in its manifest, so that it goes on where it stopped with the same ones.
"""

from __future__ import annotations

from pathlib import Path

from ..core.params import ParamsError, load_section, read_mapping
from ..core.runs import MANIFEST, read_json

# A study (a study file's `study:`, a folder's manifest) -> the params section it reads
SECTIONS = {"provenance": "provenance_study", "drift": "drift", "collapse": "collapse"}
# every study writes its headline table there, and `distill study` prints it
SUMMARY = "study_summary.csv"


def load_study(path: str | Path, overrides: dict) -> tuple[str, object, Path | None]:
    """(study, its params, the folder to go on in or None) of a study file or folder,
    `overrides` (name -> value) applied. Raises ParamsError naming the file and the key
    for an unknown study or key, a wrong type or an impossible value."""
    path = Path(path)
    if path.is_dir():
        manifest = read_json(path / MANIFEST, {})
        if "parameters" not in manifest:
            raise ParamsError(f"{path}: not a study folder (its {MANIFEST} records no "
                              "parameters); give a study file to start one")
        study = manifest.get("study", "provenance")  # the first studies recorded none
        values, folder = {**manifest["parameters"], **overrides}, path
    else:
        values = read_mapping(path, "study file", "a study's parameters")
        study, values, folder = values.pop("study", "provenance"), {**values, **overrides}, None
    if study not in SECTIONS:
        raise ParamsError(f"{path}: study: {study!r} is not one of {', '.join(SECTIONS)}")
    return study, load_section(SECTIONS[study], values, path), folder
