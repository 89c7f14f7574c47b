"""Training: SFT and HPO on the engine's own rollouts (`hpo-engine train --config FILE.yaml`)."""
