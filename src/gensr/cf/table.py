"""The frozen CF table that GenSR's CF view reads: :class:`CFTable`.

A CF table is a ``.safetensors`` file with the tensors ``item`` ((n_items + 1, dim) float32,
row i = canonical item id i, row 0 = padding = zeros) and, optionally, ``user``
((n_users + 1, dim), row 0 = zeros). Its safetensors metadata carries the data fingerprint, and
a JSON *card* sits beside it (``cf.safetensors`` -> ``cf.json``) with the training settings and
validation figures. Both files are written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from gensr.errors import GensrError, RunError, damaged
from gensr.files import first_line, open_safetensors, read_json
from gensr.outputs import make_dir, write_atomic

if TYPE_CHECKING:
    from gensr.data.dataset import SRData

FORMAT = "gensr-cf/1"
SUFFIX = ".safetensors"


def card_path(path: str | Path) -> Path:
    """Where the JSON card of the table at ``path`` lives (``cf.safetensors`` -> ``cf.json``)."""
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place
    (:func:`gensr.outputs.write_atomic`: a full disk is one line, no temporary file kept)."""
    make_dir(path.parent, RunError)
    write_atomic(path, write, RunError)


_SHA256_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks. Remembered per (path, inode, size,
    mtime), so loading a run (pin check, then the model build) reads a large table once."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def copy_table(source: str | Path, dest: str | Path) -> None:
    """Copy a table and its card to ``dest`` (atomically; the card only if there is one)."""
    source, dest = Path(source), Path(dest)
    _atomic_write(dest, lambda tmp: shutil.copyfile(source, tmp))
    if card_path(source).is_file():
        _atomic_write(card_path(dest), lambda tmp: shutil.copyfile(card_path(source), tmp))


@dataclass
class CFTable:
    """Item (and user) embedding tables aligned with a data directory's canonical ids.

    ``item`` is (n_items + 1, dim) float32 with row 0 = zeros (padding); ``user`` is
    (n_users + 1, dim) or None; ``card`` is the JSON card (fingerprint, settings, figures).
    """

    item: torch.Tensor
    user: torch.Tensor | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """The embedding width d_cf."""
        return int(self.item.shape[1])

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the data the table was trained on (from the card)."""
        return self.card.get("data_fingerprint")

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its JSON card beside it, each atomically."""
        path = Path(path)
        if path.suffix != SUFFIX:
            raise RunError(f"a CF table path must end with {SUFFIX}, not {path.name!r}")
        tensors = {"item": self.item.detach().float().cpu().contiguous()}
        if self.user is not None:
            tensors["user"] = self.user.detach().float().cpu().contiguous()
        metadata = {"format": FORMAT, "data_fingerprint": str(self.fingerprint or ""),
                    "dim": str(self.dim)}
        _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        text = json.dumps(self.card, indent=2, sort_keys=False)
        _atomic_write(card_path(path), lambda tmp: tmp.write_text(text + "\n"))
        return path

    @classmethod
    def load(cls, path: str | Path, data: SRData | None = None) -> CFTable:
        """Read a table written by ``gensr pretrain-cf``.

        With ``data``, refuses (:class:`~gensr.errors.RunError`) a table trained on other data
        (fingerprint mismatch) or whose row count is not ``data.n_items + 1``.
        """
        path = Path(path)
        if not path.is_file():
            raise RunError(f"CF table {path} does not exist "
                           "(make one with `gensr pretrain-cf DATA_DIR --out PATH`)")
        again = "pretrain it again (gensr pretrain-cf)"
        try:
            with open_safetensors(path, RunError, again) as f:
                metadata = dict(f.metadata() or {})
                names = set(f.keys())
                if "item" not in names:
                    raise RunError(f"{path} holds no 'item' tensor: not a CF table")
                item = f.get_tensor("item").float()
                user = f.get_tensor("user").float() if "user" in names else None
        except GensrError:
            raise
        except Exception as err:  # safetensors raises its own error types on bad files
            raise damaged(path, "safetensors", first_line(err), RunError, again) from None
        cpath = card_path(path)
        card: dict[str, Any] = read_json(cpath, RunError, hint=again) if cpath.is_file() else {}
        fp = metadata.get("data_fingerprint") or card.get("data_fingerprint")
        if fp:
            card["data_fingerprint"] = fp
        table = cls(item=item, user=user, card=card)
        if item.dim() != 2:
            raise RunError(f"{path}: 'item' must be 2-d (rows, dim), got shape "
                           f"{tuple(item.shape)}")
        if user is not None and (user.dim() != 2 or user.shape[1] != item.shape[1]):
            raise RunError(f"{path}: 'user' shape {tuple(user.shape)} does not fit 'item' "
                           f"shape {tuple(item.shape)}")
        if data is not None:
            table.check(data, source=str(path))
        return table

    def check(self, data: SRData, source: str = "CF table") -> None:
        """Raise :class:`RunError` unless the table's ids line up with ``data``'s."""
        if self.fingerprint != data.fingerprint:
            raise RunError(
                f"{source} was trained on data with fingerprint {self.fingerprint}, but "
                f"{data.path} has fingerprint {data.fingerprint}: item ids would not match "
                "(run `gensr pretrain-cf` on this data directory)")
        if self.item.shape[0] != data.n_items + 1:
            raise RunError(
                f"{source} has {self.item.shape[0]} item rows, but {data.path} needs "
                f"n_items + 1 = {data.n_items + 1} (row 0 = padding)")
        if self.user is not None and self.user.shape[0] != data.n_users + 1:
            raise RunError(
                f"{source} has {self.user.shape[0]} user rows, but {data.path} needs "
                f"n_users + 1 = {data.n_users + 1} (row 0 = padding)")
