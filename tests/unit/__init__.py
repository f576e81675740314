"""Unit tests: fast, seeded checks of single modules (a package so names never clash with other test folders)."""
