"""gensr: unified search and recommendation with one generative model (GenSR).

The package is organised as the data flows: ``data`` (raw logs -> canonical S&R log ->
splits and candidates), ``cf`` (LightGCN item table), ``models`` (GenSR and baselines behind
one interface), ``train`` (one trainer), ``eval`` (one protocol), ``analysis`` and ``serve``.
"""

__version__ = "0.1.0"
