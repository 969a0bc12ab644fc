"""``python -m gensr.cli …`` (what ``accelerate launch -m gensr.cli train …`` runs)."""

from gensr.cli import main

main()
