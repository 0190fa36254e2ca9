"""GenEx-Explorer: Genex-DB preparation, SVD temporal fine-tuning losses, data and validation helpers."""
