"""deita-train: Deita data selection, SFT, DPO, evaluation and publishing on the Hugging Face stack."""

__version__ = "0.1.0"
