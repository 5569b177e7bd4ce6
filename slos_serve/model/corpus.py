"""The training text: a fixed list of the standard library's own ``.py`` files.

The machines this project runs on have no network apart from package registries, so the
corpus is text every Python install carries.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

# Standard-library files used as the corpus: present (as plain modules) in Python
# 3.10-3.13 and mostly ordinary code. Missing files are skipped; the recipe hash records
# what was actually read, so a different Python simply means a different (cached) build.
CORPUS_FILES: tuple[str, ...] = tuple(
    sorted(
        """
        abc.py argparse.py ast.py base64.py bisect.py calendar.py cmd.py codecs.py
        collections/__init__.py colorsys.py configparser.py contextlib.py copy.py csv.py
        dataclasses.py difflib.py dis.py enum.py filecmp.py fnmatch.py fractions.py
        functools.py gettext.py glob.py heapq.py hmac.py inspect.py ipaddress.py
        json/__init__.py json/decoder.py json/encoder.py keyword.py linecache.py
        logging/__init__.py mimetypes.py numbers.py operator.py optparse.py os.py pickle.py
        pprint.py queue.py random.py sched.py secrets.py selectors.py shlex.py shutil.py
        socket.py statistics.py string.py subprocess.py tempfile.py textwrap.py
        threading.py tokenize.py trace.py traceback.py types.py typing.py uuid.py
        warnings.py weakref.py
        """.split()
    )
)


def corpus_paths() -> list[Path]:
    """The corpus files that exist in this Python's standard library, in fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [root / rel for rel in CORPUS_FILES if (root / rel).is_file()]


def load_corpus() -> list[str]:
    """Reads the corpus; decoding errors are replaced rather than fatal, for odd installs."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in corpus_paths()]


def corpus_token_ids(tokenizer: Any, texts: list[str], eos: int) -> list[int]:
    """The corpus as one token stream, each file followed by EOS.

    Encoded with the raw backend: no BOS per file, and no warning about files longer
    than the model's context.
    """
    token_ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        token_ids += enc.ids + [eos]
    return token_ids
