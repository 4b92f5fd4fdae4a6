"""PixPro pretraining: the method (model, loss, optimiser) and the training engine."""
from .model import ModelConfig, PixPro, StepOutput
from .loss import pixpro_loss, positive_mask, instance_loss
from .optim import LARS, lr_at, scaled_lr
from .momentum import momentum_at, update_target

__all__ = ["ModelConfig", "PixPro", "StepOutput", "pixpro_loss", "positive_mask", "instance_loss", "LARS",
           "lr_at", "scaled_lr", "momentum_at", "update_target"]
