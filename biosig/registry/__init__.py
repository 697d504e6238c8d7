"""Model-registry code: naming conventions, checkpoint discovery, publishing, promotion."""
