"""Data contract, simulator, importer and batch building."""
