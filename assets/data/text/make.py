"""Writes the language-model demo's text domains from files a Debian 12 system ships.

    python3 assets/data/text/make.py

Each domain gets `train.txt.gz` (the documents the family is trained on) and `eval.txt.gz`
(held-out documents: the perplexity domains). Documents are whole source files or whole topics,
unchanged, joined by a line holding `<|endoftext|>`. gzip is written with mtime 0 so the same
inputs give the same bytes.
"""

import gzip
import hashlib
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
STDLIB = "/usr/lib/python3.11"
LICENSES = "/usr/share/common-licenses"
SEPARATOR = "\n<|endoftext|>\n"

# Python's language reference topics (pydoc's help texts). The three longest are left out to
# keep the domain a few hundred KB; two topics are held out for evaluation.
DOCS_LEFT_OUT = {"specialnames", "compound", "types"}
DOCS_EVAL = ["import", "raise"]

CODE_TRAIN = ["argparse.py", "dataclasses.py", "functools.py", "fractions.py", "contextlib.py"]
CODE_EVAL = ["shlex.py"]

# Licence texts are copied whole (their terms allow verbatim copies only). MPL-1.1 is in
# training, as a fine-tune on licences would have an earlier licence of the held-out MPL-2.0's
# family; its wording differs throughout (2.0 was rewritten, not amended).
LEGAL_TRAIN = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-2", "GPL-3",
               "LGPL-2.1", "LGPL-3", "MPL-1.1"]
LEGAL_EVAL = ["MPL-2.0"]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def write(domain, part, documents):
    folder = os.path.join(HERE, domain)
    os.makedirs(folder, exist_ok=True)
    text = SEPARATOR.join(documents)
    path = os.path.join(folder, f"{part}.txt.gz")
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(text.encode("utf-8"))
    print(f"{domain}/{part}.txt.gz: {len(documents)} documents, {len(text.encode())} bytes "
          f"of text, {os.path.getsize(path)} compressed")


def sources(paths):
    for p in paths:
        digest = hashlib.sha256(open(p, "rb").read()).hexdigest()
        print(f"  {p} sha256 {digest}")


def main():
    spec = importlib.util.spec_from_file_location(
        "topics", os.path.join(STDLIB, "pydoc_data/topics.py"))
    topics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(topics)
    names = sorted(topics.topics)
    train = [n for n in names if n not in DOCS_LEFT_OUT and n not in DOCS_EVAL]
    write("docs", "train", [topics.topics[n] for n in train])
    write("docs", "eval", [topics.topics[n] for n in DOCS_EVAL])
    write("code", "train", [read(os.path.join(STDLIB, n)) for n in CODE_TRAIN])
    write("code", "eval", [read(os.path.join(STDLIB, n)) for n in CODE_EVAL])
    write("legal", "train", [read(os.path.join(LICENSES, n)) for n in LEGAL_TRAIN])
    write("legal", "eval", [read(os.path.join(LICENSES, n)) for n in LEGAL_EVAL])
    sources([os.path.join(STDLIB, "pydoc_data/topics.py")]
            + [os.path.join(STDLIB, n) for n in CODE_TRAIN + CODE_EVAL]
            + [os.path.join(LICENSES, n) for n in LEGAL_TRAIN + LEGAL_EVAL])


if __name__ == "__main__":
    main()
