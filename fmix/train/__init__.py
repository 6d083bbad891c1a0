"""FR training on protected faces, with the adversarial strategy-network game (docs/design.md §3)."""
