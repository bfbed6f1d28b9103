"""Figures (matplotlib) from sweep tables and analysis results."""
