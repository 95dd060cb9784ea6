"""Lightning distillation trainer, installed as ``archzoo.train``."""
