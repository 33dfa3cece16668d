"""Long-running jobs built on the engine: fine-tuning (``train``) and, later, batch embedding."""
