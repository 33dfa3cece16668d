"""E5 contrastive fine-tuning: datasets (``data``), the loss (``loss``), the loop (``trainer``),
retrieval evaluation (``evaluate``), hard-negative mining (``mining``) and the CLI (``commands``)."""
