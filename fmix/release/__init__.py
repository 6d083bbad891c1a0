"""Releases of protected faces (``fmix mask``): the folder's format, the owner's ledger, the randomness, the run."""
