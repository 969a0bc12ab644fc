"""``lightgcn``: a reference scorer reading a CF table (user · item dot products, rec only).

It needs no training beyond ``gensr pretrain-cf``; its config names the table
(``cf_path``). It scores the stored candidates and, for full ranking, every item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gensr.cf.table import CFTable
from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError, RunError
from gensr.models.base import ModelConfig, SRModel


@dataclass
class LightGCNConfig(ModelConfig):
    cf_path: str = ""  # a .safetensors table written by `gensr pretrain-cf`


class LightGCNScorer(SRModel):
    """Scores = user vector · item vector from a pretrained CF table."""

    name = "lightgcn"
    config_class = LightGCNConfig
    tasks = ("rec",)
    trainable = False

    def __init__(self, config: LightGCNConfig, data: SRData) -> None:
        super().__init__(config, data)
        if not config.cf_path:
            raise ConfigError("lightgcn needs cf_path=PATH: a table made by "
                              "`gensr pretrain-cf DATA_DIR --out PATH`")
        table = CFTable.load(config.cf_path, data)
        if table.user is None:
            raise RunError(f"{config.cf_path} holds no user table: lightgcn needs one")
        self.register_buffer("item", table.item, persistent=False)
        self.register_buffer("user", table.user, persistent=False)

    @property
    def reads_user_ids(self) -> bool:
        return True  # the user's LightGCN vector is the whole query side

    def score(self, batch: Batch) -> torch.Tensor:
        return torch.einsum("bd,bcd->bc", self.user[batch.user], self.item[batch.candidates])

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.query_embedding(batch) @ self.item_embeddings().T

    def query_embedding(self, batch: Batch) -> torch.Tensor:
        return self.user[batch.user]

    def item_embeddings(self) -> torch.Tensor:
        return self.item
