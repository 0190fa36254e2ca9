"""PECN: Something-Something V2 filtering, frame extraction, pair dataset, prompts and metrics."""
