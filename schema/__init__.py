"""Data contracts: SQLAlchemy Core tables and the JSON Schemas of package payloads."""
