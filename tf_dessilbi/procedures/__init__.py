"""Procedures built from training runs: ticket search, early tickets, and the mask methods' drivers."""
