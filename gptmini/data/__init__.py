"""Data: corpora for pretraining, instruction records, prompt templates, batches."""
