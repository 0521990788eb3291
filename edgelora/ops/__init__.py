"""Operations over a device's life: the labelled-sample store, the versioned adapter store with its
holdout gate, personalisation, and serving many adapters over one backbone."""
