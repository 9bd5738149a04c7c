"""Sealed key records on the parent's disk (SQLite)."""
