"""Generated JSON Schemas, the docs pages they come from, and rule overlays (installed as atnorm.bundled_schemas)."""
