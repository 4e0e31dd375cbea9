"""Alembic migrations of the registry; ``Registry.open`` applies them. Shipped inside the package."""
