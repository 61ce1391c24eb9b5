"""ddbench: produce, score and publish dataset-distillation results under versioned protocols."""

__version__ = "0.1.0"
