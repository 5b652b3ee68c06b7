"""Builds an offline NLTK data folder for evidently's NLTK-based text descriptors.

Sources: Debian's wordnet-base and wordnet-sense-index (/usr/share/wordnet), wamerican
(/usr/share/dict/american-english) and PyPI's vaderSentiment (its vader_lexicon.txt). Nothing is
downloaded. NLTK looks in <venv>/share/nltk_data by itself, so the default target needs no
environment variable. Usage: python scripts/build_nltk_data.py TARGET
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
WORDS = Path("/usr/share/dict/american-english")
# WordNet's lexicographer files; Debian ships no `lexnames`, which nltk's reader opens.
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def build(target: Path) -> None:
    import vaderSentiment

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    wordnet = staging / "corpora" / "wordnet"
    wordnet.mkdir(parents=True)
    for pattern in ("data.*", "index.*", "*.exc"):
        for source in WORDNET.glob(pattern):
            shutil.copy(source, wordnet / source.name)
    if not (wordnet / "index.sense").exists():
        sys.exit("build_nltk_data: /usr/share/wordnet/index.sense is missing (Debian package wordnet-sense-index)")
    (wordnet / "lexnames").write_text(
        "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
    )
    words = staging / "corpora" / "words"
    words.mkdir(parents=True)
    ascii_lines = [line for line in WORDS.read_bytes().splitlines() if all(32 <= byte < 127 for byte in line)]
    (words / "en").write_bytes(b"\n".join(ascii_lines) + b"\n")
    sentiment = staging / "sentiment"
    sentiment.mkdir()
    lexicon = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    with zipfile.ZipFile(sentiment / "vader_lexicon.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(lexicon, "vader_lexicon/vader_lexicon.txt")
    # nltk refuses data folders that other users can write to.
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build(Path(sys.argv[1]))
    print(f"NLTK data built in {sys.argv[1]}")
