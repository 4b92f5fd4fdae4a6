"""PixPro pretraining: the method (model, loss, optimiser) and the training engine."""
from .loss import pixpro_loss, positive_mask, instance_loss
from .methods import METHODS, Method, MethodOutput, build_method
from .methods.pixpro import PixPro
from .optim import LARS, lr_at, scaled_lr
from .momentum import momentum_at, update_target

__all__ = ["METHODS", "Method", "MethodOutput", "build_method", "PixPro", "pixpro_loss", "positive_mask",
           "instance_loss", "LARS", "lr_at", "scaled_lr", "momentum_at", "update_target"]
