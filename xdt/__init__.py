"""xdt: XtremeDistil(Transformers) multilingual distillation at cluster scale."""

__version__ = "0.1.0"
