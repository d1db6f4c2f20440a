"""Data: datasets by name, the loaders that batch them (in memory or streamed), and a user's own loaders adapted for the engine."""
