"""`python -m hpo_engine ...` = `hpo-engine ...` (what `torchrun -m hpo_engine train ...` runs)."""
from hpo_engine.cli import main

main()
