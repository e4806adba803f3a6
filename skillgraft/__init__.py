"""skillgraft: a reproducible compendium for task-specific skill localization by grafting."""
__version__ = "0.2.0"
