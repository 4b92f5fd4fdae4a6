"""PixPro pretraining: the methods (model, loss, optimiser), the training engine, and
:func:`build_training` for a loop of one's own."""
from .config import TrainConfig
from .export import load_encoder
from .hardware import native_precisions, resolve_precision
from .loss import instance_loss, pixpro_loss, positive_mask
from .methods import METHODS, Method, MethodOutput, build_method
from .methods.pixpro import PixPro
from .momentum import momentum_at, update_target
from .optim import LARS, lr_at, scaled_lr
from .training import Training, autocast, build_training

__all__ = ["TrainConfig", "load_encoder", "build_training", "Training", "build_method", "METHODS", "Method", "MethodOutput",
           "autocast", "native_precisions", "resolve_precision", "PixPro", "pixpro_loss", "positive_mask",
           "instance_loss", "LARS", "lr_at", "scaled_lr", "momentum_at", "update_target"]
