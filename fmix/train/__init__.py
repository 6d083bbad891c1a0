"""FR training on protected faces, with the adversarial strategy-network game (DESIGN 3)."""
