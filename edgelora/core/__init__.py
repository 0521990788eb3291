"""The adapter math and training (numpy only): skip adapters over one flat buffer (lora), losses,
optimisers and schedules, metrics, the seeded shuffle, the training loop and k-fold selection."""
