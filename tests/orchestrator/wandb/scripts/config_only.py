"""An unmodified W&B script with no command-line flags: every parameter comes from ``wandb.config``."""

import wandb

wandb.init()
config = wandb.config
score = config.optim["lr"] * 10 + (1 if config.optim["name"] == "adam" else 0)
for step in range(3):
    wandb.log({"score": score * (step + 1)})
wandb.run.summary["score"] = 123.0  # an explicit summary is the objective, as in W&B
