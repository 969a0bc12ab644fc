"""The CF view's item table: LightGCN pretraining (``gensr pretrain-cf``) and loading.

``pretrain_cf(data, out)`` trains LightGCN on the training split's rec interactions and writes
``out`` (.safetensors: ``item``, ``user``) plus a JSON card beside it; ``CFTable.load(out,
data)`` reads it back, refusing a table made on other data.
"""

from gensr.cf.pretrain import CFConfig, pretrain_cf
from gensr.cf.table import CFTable, card_path

__all__ = ["CFConfig", "CFTable", "card_path", "pretrain_cf"]
