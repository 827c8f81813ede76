"""An unmodified W&B training script (nothing orchestrate-specific): argparse flags, ``wandb.init(config=args)``,
``wandb.log`` once per batch-group and once per epoch, as people write them for ``wandb agent``.

val_acc(epoch) = quality * (1 - 0.5 ** (epoch + 1)): a lower quality is worse at every epoch.
"""

import argparse
import time

import wandb

parser = argparse.ArgumentParser()
parser.add_argument("--quality", type=float, default=1.0)
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()

run = wandb.init(project="not-this-project", config=args)  # a sweep overrides the project, as under an agent
config = wandb.config
for epoch in range(config.epochs):
    time.sleep(config.sleep)
    acc = config.quality * (1 - 0.5 ** (epoch + 1))
    wandb.log({"train/loss": 1 - acc})  # no sweep metric in this one: not a hyperband iteration
    wandb.log({"epoch": epoch, "val_acc": acc})
print("done", flush=True)
wandb.finish()
