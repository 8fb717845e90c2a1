"""Using a trained FourM beyond generation: features, task heads, fine-tuning (frozen, full, LoRA
through peft) and new modalities on a trained checkpoint."""
