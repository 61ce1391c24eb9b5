"""The training engine: one loop every protocol shares (`train`), K models stacked with vmap (`train_many`),
batched tensor augmentations (`augment`), the BatchNorm-statistics loss (`bnloss`), torchrun / DDP (`ddp`).
"""
